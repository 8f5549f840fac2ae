"""Recipe evals for chat derivations: MT-bench pairwise (derived vs parent) and held-out loss per category.

``mtbench_pairwise`` answers a FastChat question file with parent and derived (MT-bench answer protocol),
writes both answer files and the judgments into the artifact, and scores derived against parent with
the pair-v2 judge in both orders: win/tie/loss with a bootstrap CI. With a small local judge the
numbers are a protocol check, not comparable to GPT-4-judged MT-bench.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from pydantic import Field

from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval


class MTBenchPairwiseConfig(EvalConfig):
    questions: str = "shared:vicuna_bench/question.jsonl"  # FastChat question.jsonl (``shared:`` allowed)
    # base spec / artifact, "parent", "derived", an OpenAI-compatible URL, or "none": answers only (saved
    # with the artifact, to judge later with `herd eval judge`)
    judge: str = "smollm2"
    judge_model: str | None = None  # model name at a judge URL
    max_new_tokens: int = Field(default=1024, gt=0)  # per answer turn (MT-bench: 1024)
    judge_max_new_tokens: int = Field(default=2048, gt=0)  # FastChat: 2048
    max_questions: int | None = Field(default=None, gt=0)
    max_turns: int | None = Field(default=None, gt=0)
    bootstrap: int = Field(default=1000, gt=0)
    seed: int = 0

    def unavailable(self, recipe_dir: Path) -> str | None:
        from herd.evals.mtbench import missing_question_file

        return missing_question_file(self.questions, recipe_dir)


@register_eval("mtbench_pairwise", MTBenchPairwiseConfig)
def run_mtbench_pairwise(ctx: EvalContext, cfg: MTBenchPairwiseConfig) -> EvalOutput:
    from herd.core.errors import ConfigError
    from herd.core.paired import with_paired
    from herd.core.paths import resolve_data_path
    from herd.evals.judge import games, make_judge, play, summarize, summary_markdown
    from herd.evals.mtbench import generate_answers, read_questions, write_answers

    recipe_dir = Path(ctx.recipe.source_file).parent if ctx.recipe.source_file else Path.cwd()
    qpath = resolve_data_path(cfg.questions, recipe_dir)
    if not qpath.is_file():
        raise ConfigError(f"evals.mtbench_pairwise.questions: {qpath} not found (a FastChat question.jsonl)")
    questions = read_questions(qpath)[: cfg.max_questions]
    answers, files = {}, []
    for role in ("parent", "derived"):
        ctx.log(f"MT-bench answers, {role} ({len(questions)} questions)")
        ans = generate_answers(ctx.model(role), ctx.tokenizer, ctx.template, questions, model_id=role,
                               max_new_tokens=cfg.max_new_tokens, max_turns=cfg.max_turns, seed=cfg.seed,
                               progress=ctx.progress)
        files.append(str(write_answers(ctx.out_dir / f"mtbench-answers-{role}.jsonl", ans)))
        answers[role] = {a["question_id"]: a for a in ans}
    if cfg.judge == "none":
        n_turns = sum(len(a["choices"][0]["turns"]) for a in answers["derived"].values())
        md = (f"## {qpath.name}: answers, not judged\n\nParent and derived answered the {len(questions)} questions "
              f"({n_turns} turns each, the MT-bench answer protocol): `mtbench-answers-parent.jsonl`, "
              "`mtbench-answers-derived.jsonl` in this artifact. Judge them pairwise with any OpenAI-compatible "
              "judge:\n\n    herd eval judge mtbench-answers-derived.jsonl mtbench-answers-parent.jsonl "
              "--judge http://HOST:PORT/v1\n")
        return EvalOutput(extra={"mtbench_answers": {"questions": len(questions), "turns": n_turns, "files": files}},
                          markdown=md, files=files)
    judge_spec = {"parent": str(ctx.parent_path), "derived": str(ctx.derived_path)}.get(cfg.judge, cfg.judge)
    ctx._cache.clear()  # free the evaluated model before the judge loads
    judge = make_judge(judge_spec, model=cfg.judge_model, max_new_tokens=cfg.judge_max_new_tokens)
    game_list = games(answers["derived"], answers["parent"])
    ctx.log(f"judging {len(game_list)} games in both orders with {judge.name}")
    results = play(judge, game_list, model_1="derived", model_2="parent", progress=ctx.progress)
    jpath = ctx.out_dir / "mtbench-judgments.jsonl"
    jpath.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    files.append(str(jpath))
    s = summarize(results, n_boot=cfg.bootstrap, seed=cfg.seed)
    ds = f"{qpath.name} ({s['games']} games, judge {s['judge']})"
    adj = s["win_rate_adjusted"]
    score = [1.0 if r["winner"] == "model_1" else 0.5 if r["winner"] == "tie" else 0.0
             for r in results if r["winner"] != "error"]  # derived's points per game; parent's are 1 − that
    metrics = [with_paired({"task": "MT-bench pairwise win rate, ties ½ (derived vs parent)", "name": "win_rate_adjusted",
                            "dataset": ds, "parent": None if adj is None else round(1 - adj, 4), "derived": adj,
                            "better": "higher"}, [1 - x for x in score], score, n_boot=cfg.bootstrap, seed=cfg.seed)]
    return EvalOutput(metrics=metrics, extra={"mtbench_pairwise": s},
                      markdown=summary_markdown(s, "MT-bench pairwise judgment (derived = model 1)"), files=files)


class HeldoutByCategoryConfig(EvalConfig):
    key: str = "category"  # the record's meta key to group by (Dolly: its 8 categories)


@register_eval("heldout_loss_by_category", HeldoutByCategoryConfig)
def run_heldout_by_category(ctx: EvalContext, cfg: HeldoutByCategoryConfig) -> EvalOutput:
    """Held-out response loss per group (dossier §10.3, Dolly: per category), parent vs derived.

    The records are scored once, as a whole (the ``heldout_loss`` eval's results when it ran first), and
    each group takes its records' losses, in the order scoring the group alone would have given them."""
    from herd.core.paired import ratio_stat, with_paired
    from herd.core.recipe import eval_max_len
    from herd.data.tokenize import tokenize_examples
    from herd.engine.heldout import packing_order

    max_len = eval_max_len(ctx.recipe)
    items, _ = tokenize_examples(ctx.eval_examples, ctx.template, ctx.tokenizer, max_len)
    group_of = {(ex.source, ex.index): str(ex.meta.get(cfg.key) or "(none)") for ex in ctx.eval_examples}
    members: dict[str, list[int]] = defaultdict(list)  # group → its items' indices, in item order
    for i, it in enumerate(items):
        members[group_of[(it.source, it.index)]].append(i)
    members = dict(sorted(members.items()))
    res: dict[str, dict] = {"parent": {}, "derived": {}}
    for role in ("parent", "derived"):
        ctx.log(f"held-out loss by {cfg.key}, {role} ({len(members)} groups)")
        whole = ctx.heldout_loss(role, items, max_len, progress=ctx.progress, desc=f"eval heldout_loss {role}")
        by_item = dict(zip(whole["order"], whole["per_record"]))
        for g, idx in members.items():
            per = [by_item[idx[j]] for j in packing_order([items[i] for i in idx], max_len)]
            tokens = sum(c for _, c in per)
            res[role][g] = {"loss": sum(s for s, _ in per) / max(1, tokens), "tokens": tokens,
                            "records": len(per), "per_record": per}
    metrics = [with_paired({"task": f"held-out response loss, {cfg.key} {g}", "name": "loss",
                            "dataset": f"{ctx.recipe.name} held-out split, {cfg.key} {g} "
                                       f"({res['parent'][g]['records']} records, {res['parent'][g]['tokens']} tokens)",
                            "parent": round(res["parent"][g]["loss"], 4),
                            "derived": round(res["derived"][g]["loss"], 4), "better": "lower", "category": g,
                            "group": f"held-out response loss per {cfg.key}"},
                           res["parent"][g]["per_record"], res["derived"][g]["per_record"], stat=ratio_stat)
               for g in members]
    return EvalOutput(metrics=metrics)
