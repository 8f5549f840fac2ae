"""Scorecard evals of the Llama-2-Chat pipeline (dossier §5.5, issue: "reward-model-judged win rate of
each stage's model against the SFT model on held-out prompts, KL to the reference").

``reward_win_rate``: for every policy stage after the baseline stage (``sft``), greedy answers of that
stage's model and of the baseline to the same held-out prompts, both scored by the reward model: win
rate with ties as ½ and a bootstrap CI. The prompts come from ``questions``: one or more files no stage
trains on (FastChat question files, first turns; Self-Instruct seed tasks; ``herd.evals.prompt_sets``),
or else the prompts of the reward-model stage's held-out pairs;
those are held out from the reward model only, so another stage whose data holds the same prompts (the
SFT data, rejection sampling's prompts) may have trained on them.
KL(stage ‖ baseline) is estimated on replies the stage samples at temperature 1: the mean of
log π_stage(y|x) − log π_baseline(y|x) per reply (an unbiased Monte-Carlo estimate of the sequence KL).
The reward model's held-out pairwise accuracy (before and after its training) is reported too.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval


class RewardWinRateConfig(EvalConfig):
    reward_model: str = "reward_model"  # the reward-model stage's name
    baseline: str = "sft"  # the stage every later policy stage is compared with
    n: int = Field(default=32, gt=0)  # held-out prompts
    # prompt files read in order, the first ``n`` prompts judged (``shared:`` allowed): FastChat question.jsonl
    # (first turns) or Self-Instruct seed_tasks.jsonl; None: the prompts of the reward model's held-out pairs
    questions: str | list[str] | None = None
    max_new_tokens: int = Field(default=256, gt=0)
    kl_samples: int = Field(default=1, ge=0)  # sampled replies per prompt for the KL estimate (0: skip)
    bootstrap: int = Field(default=1000, gt=0)
    seed: int = 0

    def unavailable(self, recipe_dir: Path) -> str | None:
        from herd.evals.prompt_sets import missing_prompt_file

        return missing_prompt_file(self.questions, recipe_dir) if self.questions else None


@register_eval("reward_win_rate", RewardWinRateConfig)
def run_reward_win_rate(ctx: EvalContext, cfg: RewardWinRateConfig) -> EvalOutput:
    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.core.errors import ConfigError
    from herd.core.paired import mean_ci, paired
    from herd.core.recipe import POLICY_KINDS
    from herd.engine.generation import generate
    from herd.engine.reward_model import load_reward_model

    by_name = {st.name: (st, Path(d)) for st, d in ctx.stages}
    if cfg.reward_model not in by_name or cfg.baseline not in by_name:
        raise ConfigError(f"evals.reward_win_rate: stages '{cfg.reward_model}' and '{cfg.baseline}' must both "
                          f"be in the recipe (have {list(by_name)})")
    rm_stage, rm_dir = by_name[cfg.reward_model]
    names = [st.name for st, _ in ctx.stages]
    later = [(st, Path(d)) for st, d in ctx.stages[names.index(cfg.baseline) + 1:]
             if st.kind in POLICY_KINDS and st.kind != "pretrain"]
    if cfg.questions:
        from herd.evals.prompt_sets import read_prompt_set

        recipe_file = ctx.recipe.source_file
        prompts, source = read_prompt_set(cfg.questions, Path(recipe_file).parent if recipe_file else Path.cwd(), cfg.n)
    else:
        prompts = _heldout_prompts(rm_stage, ctx.recipe.source_file, cfg.n)
        source = f"{len(prompts)} prompts of stage {rm_stage.name}'s held-out pairs"
    win_rows, kl_rows = [], []

    def answers(path: Path, label: str) -> list[str]:
        tok, model = load_tokenizer(resolve_base(path)), load_model(resolve_base(path))
        texts = [ctx.template.prompt(m, tok) for m in prompts]
        return generate(model, tok, texts, max_new_tokens=cfg.max_new_tokens, stop=ctx.template.stop_strings(tok),
                        progress=ctx.progress, desc=f"eval reward_win_rate {label}")

    ctx._cache.clear()
    base_dir = by_name[cfg.baseline][1]
    ctx.log(f"reward win rate: greedy answers of {cfg.baseline} ({len(prompts)} prompts)")
    base_answers = answers(base_dir, cfg.baseline)
    rm = load_reward_model(rm_dir, ctx.template)
    base_scores = rm.score(prompts, base_answers).float().numpy()
    rows, samples = [], []
    for st, d in later:
        ctx.log(f"reward win rate: greedy answers of {st.name}")
        ans = answers(d, st.name)
        scores = rm.score(prompts, ans).float().numpy()
        wins = (scores > base_scores).astype(float) + 0.5 * (scores == base_scores)  # ties ½
        win, ci = float(wins.mean()), mean_ci(wins, n_boot=cfg.bootstrap, seed=cfg.seed)
        row = {"stage": st.name, "kind": st.kind, "win_rate": round(win, 4), "ci95": ci,
               "mean_reward": round(float(scores.mean()), 4), "baseline_mean_reward": round(float(base_scores.mean()), 4)}
        win_rows.append({"task": f"reward-model-judged win rate vs {cfg.baseline}, stage {st.name} (ties ½)",
                        "name": f"rm_win_rate_{st.name}", "dataset": f"{source}, greedy",
                        "parent": round(1 - win, 4), "derived": round(win, 4), "better": "higher",
                        **paired(1 - wins, wins, better="higher", n_boot=cfg.bootstrap, seed=cfg.seed),
                        "derived_ci95": ci})
        if cfg.kl_samples:
            ctx.log(f"KL({st.name} || {cfg.baseline}) on {cfg.kl_samples} sampled replies per prompt")
            kl, n_sampled = _kl_to_baseline(ctx, cfg, st.name, d, base_dir, prompts)
            row["kl_to_baseline"] = round(kl, 4)
            kl_rows.append({"task": f"KL(stage {st.name} ‖ {cfg.baseline}) per reply, nats (sampled at T=1)",
                            "name": f"kl_{st.name}", "dataset": f"{n_sampled} sampled replies to held-out prompts",
                            "parent": 0.0, "derived": round(kl, 4), "better": "lower"})
        rows.append(row)
        samples += [{"stage": st.name, "prompt": p[-1]["content"], "baseline": b, "answer": a,
                     "reward_baseline": float(sb), "reward": float(s)}
                    for p, b, a, sb, s in zip(prompts, base_answers, ans, base_scores, scores)]
    out_file = ctx.out_dir / "reward_win_rate.jsonl"
    out_file.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in samples))
    md = _markdown(rows, cfg.baseline, rm_stage.name, source)
    # the final policy's win rate first: placed first among the recipe's evals, it is the scorecard's headline
    metrics = win_rows[::-1] + _rm_accuracy(rm_stage, rm_dir) + kl_rows
    return EvalOutput(metrics=metrics, extra={"reward_win_rate": rows}, markdown=md, files=[str(out_file)])


def _heldout_prompts(rm_stage, recipe_file: str | None, n: int) -> list[list[dict]]:
    """The first ``n`` distinct prompts of the reward model's held-out pairs (the reward model never saw them)."""
    from herd.stages.pairs import load_pair_data

    prompts, seen = [], set()
    for p in load_pair_data(rm_stage, {"file": recipe_file}).evals:
        key = json.dumps(p.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(p.prompt)
    return prompts[:n]


def _rm_accuracy(rm_stage, rm_dir: Path) -> list[dict]:
    """The reward model's held-out pairwise accuracy before and after its training, from its lineage."""
    rm_metrics = json.loads((rm_dir / "lineage.json").read_text()).get("metrics") or {}
    acc_after = (rm_metrics.get("heldout") or {}).get("accuracy")
    acc_before = (rm_metrics.get("heldout_before") or {}).get("accuracy")
    if acc_after is None:
        return []
    row = {"task": "reward model: held-out pairwise accuracy (before → after its training)",
           "name": "rm_accuracy", "dataset": f"{(rm_metrics.get('heldout') or {}).get('pairs')} held-out "
           f"pairs of stage {rm_stage.name}", "parent": acc_before, "derived": acc_after, "better": "higher"}
    path = rm_dir / "heldout_rewards.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if rows and "chosen_before" in rows[0]:  # per pair: right (1), tie (½: neither ranked), wrong (0)
        from herd.core.paired import mean_ci, with_paired

        def right(c: float, r: float) -> float:
            return 1.0 if c > r else 0.5 if c == r else 0.0

        after = [right(x["chosen"], x["rejected"]) for x in rows]
        row = with_paired(row, [right(x["chosen_before"], x["rejected_before"]) for x in rows], after)
        row["derived_ci95"] = mean_ci(after)  # the bar: the trained RM's accuracy CI above 0.5
    return [row]


def _kl_to_baseline(ctx: EvalContext, cfg: RewardWinRateConfig, name: str, stage_dir: Path, base_dir: Path,
                    prompts: list) -> tuple[float, int]:
    """KL(stage ‖ baseline) per reply in nats, on ``kl_samples`` replies per prompt sampled at T=1."""
    import torch

    from herd.base import load_model, load_tokenizer, resolve_base
    from herd.engine.generation import generate
    from herd.engine.logprobs import reply_logps

    tok = load_tokenizer(resolve_base(stage_dir))
    pol = load_model(resolve_base(stage_dir))
    ps = [m for m in prompts for _ in range(cfg.kl_samples)]
    texts = [ctx.template.prompt(m, tok) for m in ps]
    sampled = generate(pol, tok, texts, max_new_tokens=cfg.max_new_tokens, temperature=1.0,
                       stop=ctx.template.stop_strings(tok), seed=cfg.seed, progress=ctx.progress,
                       desc=f"eval reward_win_rate KL {name}")
    with torch.no_grad():
        lp = reply_logps(pol, tok, ctx.template, ps, sampled).float()
        del pol
        ref = load_model(resolve_base(base_dir))
        lr = reply_logps(ref, load_tokenizer(resolve_base(base_dir)), ctx.template, ps, sampled).float()
        del ref
    return float((lp - lr).mean()), len(ps)


def _markdown(rows: list[dict], baseline: str, rm_name: str, prompts: str) -> str:
    md = ["### Reward-model-judged comparison with the SFT model", "",
          "| stage | win rate vs " + baseline + " (95% CI) | mean reward | baseline mean reward | KL |",
          "|---|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['stage']} | {r['win_rate']} [{r['ci95'][0]}, {r['ci95'][1]}] | {r['mean_reward']} | "
                  f"{r['baseline_mean_reward']} | {r.get('kl_to_baseline', '–')} |")
    md += ["", f"Judged by the reward model of stage `{rm_name}` on {prompts}; "
           "a small reward model on few pairs is a noisy judge."]
    return "\n".join(md)
