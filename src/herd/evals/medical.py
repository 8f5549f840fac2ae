"""Recipe evals ``pubmedqa`` and ``medqa``: Meditron's raw-model few-shot protocol (recipes.md §4.4–4.5).

Both score parent and derived on identical prompts (Meditron's instruction, k demos, the item, "The
answer is:") by top-token or log-likelihood (:mod:`herd.evals.mcq`), report accuracy with a seeded
percentile-bootstrap 95% CI (and a paired CI of derived − parent), and write per-item predictions.

- ``pubmedqa``: the 500 PMIDs of PubMedQA's official test split (labels from test_ground_truth.json),
  prompt = contexts + question (upstream ``ClosedPubMedQA``); demos from the 500 non-test PQA-L records.
- ``medqa``: MedQA-USMLE 4-option test (1,273 items) with the MedQA instruction (it says "A to E":
  upstream uses the 5-option instruction for the 4-option set too). Deviation: only the test file is
  shipped, so demos come from the test file itself (one fixed draw, the item itself excluded), where
  upstream draws them from the train split.

Upstream averages 3 demo seeds (1234, 432, 32); here one seed per run (``seed``, default 1234).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from herd.core.errors import ConfigError, DataError
from herd.core.paired import macro_f1, macro_f1_stat, shuffled_chance, with_paired
from herd.data.documents.pubmedqa import PUBMEDQA_INSTRUCTION, pubmedqa_prompt
from herd.data.documents.pubmedqa import PUBMEDQA_LABELS as _LABELS
from herd.evals.mcq import (
    MCQItem,
    bootstrap_ci,
    build_prompt,
    continuations,
    format_mcq,
    pick_demos,
    score_items,
)
from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval

# recipes.md §4.4 (Meditron Table 2 / evaluation/instructions.json), verbatim
MEDQA_INSTRUCTION = (
    "You are a medical doctor taking the US Medical Licensing Examination. You need to demonstrate your "
    "understanding of basic and clinical science, medical knowledge, and mechanisms underlying health, disease, "
    "patient care, and modes of therapy. Show your ability to apply the knowledge essential for medical "
    "practice. For the following multiple-choice question, select one correct answer from A to E. Base your "
    "answer on the current and standard practices referenced in medical guidelines.")
PUBMEDQA_LABELS = list(_LABELS)


class MedicalMCQConfig(EvalConfig):
    n: int | None = Field(default=None, gt=0)  # a seeded random subset of n test items; None = all
    shots: int = Field(default=3, ge=0)  # Meditron raw 7B: 3-shot (70B: 5)
    mode: Literal["top_token", "loglik"] = "top_token"
    batch_size: int = Field(default=4, gt=0)
    bootstrap: int = Field(default=1000, gt=0)
    seed: int = 1234  # demo draw and bootstrap (upstream's first few-shot seed)
    max_len: int = Field(default=2048, gt=0)  # prompt + option tokens; longer prompts lose their start
    instruction: str | None = None  # None = Meditron's instruction for the task


class PubMedQAConfig(MedicalMCQConfig):
    data: str = "shared:pubmedqa"  # folder with ori_pqal.json and test_ground_truth.json
    # "dev" scores the dev split of the non-test questions instead of the official test split: for choosing
    # settings without touching test, which a final run scores once
    split: Literal["test", "dev"] = "test"
    dev_size: int = Field(default=100, ge=1)  # non-test questions held out as dev (the rest: train, demos)
    split_seed: int = 42  # the same three as the pubmedqa reader's options, so dev never trains
    # few_shot: Table 4's raw-model prompt ("… The answer is:" after k demos); chat: Table 5's fine-tuned
    # models, zero-shot in the fine-tuning format (the recipe's template: system = instruction, user = item,
    # the assistant turn opened), options scored as the first token of "yes"/"no"/"maybe"
    prompt: Literal["few_shot", "chat"] = "few_shot"

    @model_validator(mode="after")
    def _chat_is_zero_shot(self):
        if self.prompt == "chat" and self.shots:
            raise ValueError("prompt: chat is the fine-tuned models' zero-shot format; set shots: 0")
        return self

    def unavailable(self, recipe_dir: Path) -> str | None:
        from herd.core.paths import resolve_data_path

        folder = resolve_data_path(self.data, recipe_dir)
        folder = folder if folder.is_dir() else folder.parent
        missing = [f for f in ("ori_pqal.json", "test_ground_truth.json") if not (folder / f).is_file()]
        return f"PubMedQA files {missing} not found in {folder}" if missing else None


class MedQAConfig(MedicalMCQConfig):
    data: str = "shared:medqa_usmle_4opt_test/phrases_no_exclude_test.jsonl"
    target: Literal["label", "text"] = "label"  # loglik over " A" or over " A. {option text}"

    def unavailable(self, recipe_dir: Path) -> str | None:
        from herd.core.paths import resolve_data_path

        path = resolve_data_path(self.data, recipe_dir)
        return None if path.is_file() else f"MedQA test file {path} not found (JSON Lines with question/options)"


# ---------------------------------------------------------------------------------------------------
# Items


def pubmedqa_items(path: str | Path, *, dev_size: int = 100, split_seed: int = 42) -> dict[str, list[MCQItem]]:
    """PQA-L items of each split (:func:`herd.data.documents.pubmedqa.pqal_splits`): ``test`` = the official
    500 with labels from test_ground_truth.json (test-file order), ``dev`` and ``train`` = the non-test
    questions (ori_pqal.json order; demos come from train, so a dev item is never its own demo)."""
    from herd.data.documents.pubmedqa import load_pqal, load_test_labels, pqal_splits

    records, labels = load_pqal(path), load_test_labels(path)
    bad = {p: v for p, v in labels.items() if v not in PUBMEDQA_LABELS}
    if bad:
        raise DataError(str(path), f"test labels must be yes/no/maybe, got {dict(list(bad.items())[:3])}")
    parts = pqal_splits(path, dev_size=dev_size, seed=split_seed)

    def item(pmid: str, answer: str) -> MCQItem:
        r = records[pmid]
        return MCQItem(id=pmid, prompt=pubmedqa_prompt(r), labels=list(PUBMEDQA_LABELS), answer=answer,
                       meta={"year": r.get("YEAR")})

    return {"test": [item(p, labels[p]) for p in parts["test"]],
            **{k: [item(p, records[p]["final_decision"]) for p in parts[k]] for k in ("dev", "train")}}


def medqa_items(path: str | Path) -> list[MCQItem]:
    """MedQA JSON Lines records (question, options {A..}, answer_idx, answer) as items ``medqa-{k}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    items = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise DataError(str(path), f"invalid JSON ({e})", line=lineno) from None
            opts = r.get("options") if isinstance(r, dict) else None
            if not isinstance(opts, dict) or not opts or not isinstance(r.get("question"), str):
                raise DataError(str(path), "needs a string 'question' and an 'options' object", line=lineno)
            labels = sorted(opts)
            if r.get("answer_idx") not in opts:
                raise DataError(str(path), f"answer_idx {r.get('answer_idx')!r} is not one of {labels}",
                                line=lineno, field="answer_idx")
            if "answer" in r and opts[r["answer_idx"]] != r["answer"]:
                raise DataError(str(path), f"answer_idx {r['answer_idx']} is {opts[r['answer_idx']]!r} but "
                                f"answer is {r['answer']!r}", line=lineno, field="answer")
            texts = [str(opts[k]) for k in labels]
            items.append(MCQItem(id=f"medqa-{len(items)}", prompt=format_mcq(r["question"], texts), labels=labels,
                                 answer=r["answer_idx"], texts=texts, meta={"meta_info": r.get("meta_info")}))
    if not items:
        raise DataError(str(path), "no records")
    return items


# ---------------------------------------------------------------------------------------------------
# The shared run


def run_mcq(ctx: EvalContext, cfg: MedicalMCQConfig, *, key: str, title: str, dataset: str, items: list[MCQItem],
            demos_for: Callable[[MCQItem], list[MCQItem]], instruction: str, target: str = "label",
            chat: bool = False, majority: str | None = None) -> EvalOutput:
    """Score ``items`` with parent and derived on identical prompts; accuracy, CIs, predictions files.

    ``chat``: the fine-tuned models' zero-shot prompt instead (:func:`chat_prompt`). ``majority`` (a label,
    chosen without the scored items): also macro-F1 over the labels with its paired CI, and the scores of
    always answering ``majority`` beside them, and what each model's own answers score shuffled over the
    items (:func:`~herd.core.paired.shuffled_chance`), so that a gain is not read off the label prior alone."""
    if chat:
        prompts = [chat_prompt(ctx.template, ctx.tokenizer, instruction, it) for it in items]
        conts = [[lab for lab in it.labels] for it in items]
    else:
        prompts = [build_prompt(instruction, it, demos_for(it), target) for it in items]
        conts = [continuations(it, target) for it in items]
    gold = [it.labels.index(it.answer) for it in items]
    n_labels = len(items[0].labels) if items else 0
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    res, preds, files, summary = {}, {}, [], {}
    for role in ("parent", "derived"):
        ctx.log(f"{title}, {role} ({len(items)} items, {cfg.shots}-shot, {cfg.mode})")
        model = ctx.model(role)
        home = next(model.parameters()).device
        try:  # on the accelerator when there is one; back home after, for evals that assume CPU
            from herd.engine.training import device  # torch: only when the eval runs

            scores = score_items(model.to(device()), ctx.tokenizer, prompts, conts, mode=cfg.mode,
                                 batch_size=cfg.batch_size, max_len=cfg.max_len, progress=ctx.progress,
                                 desc=f"eval {key} {role}")
        except ValueError as e:
            raise ConfigError(f"evals.{key}: {e}") from e
        finally:
            model.to(home)
        correct = [int(s.pred == g) for s, g in zip(scores, gold)]
        res[role], preds[role] = correct, [s.pred for s in scores]
        path = ctx.out_dir / f"{key}-predictions-{role}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for it, s, c in zip(items, scores, correct):
                f.write(json.dumps({"id": it.id, "gold": it.answer, "pred": it.labels[s.pred], "correct": bool(c),
                                    "scores": {lab: round(v, 4) for lab, v in zip(it.labels, s.scores)},
                                    "top1_token": s.top1_token, "top1_in_options": s.top1_in_options,
                                    "prompt_tokens": s.prompt_tokens, "truncated": s.truncated},
                                   ensure_ascii=False) + "\n")
        files.append(str(path))
        n = len(correct)
        summary[role] = {"accuracy": round(sum(correct) / n, 4) if n else None,
                         "ci95": bootstrap_ci(correct, n_boot=cfg.bootstrap, seed=cfg.seed), "correct": sum(correct),
                         "items": n, "top1_in_options": round(sum(s.top1_in_options for s in scores) / n, 4) if n else None,
                         "truncated": sum(s.truncated for s in scores)}
        if majority is not None and n:
            summary[role]["macro_f1"] = round(macro_f1(gold, preds[role], n_labels), 4)
            summary[role]["predicted"] = {lab: preds[role].count(k) for k, lab in enumerate(items[0].labels)}
            summary[role]["shuffled"] = shuffled_chance(gold, preds[role], n_labels, n_perm=cfg.bootstrap,
                                                        seed=cfg.seed)
    diffs = [d - p for p, d in zip(res["parent"], res["derived"])]
    delta = round(sum(diffs) / len(diffs), 4) if diffs else None
    delta_ci = bootstrap_ci(diffs, n_boot=cfg.bootstrap, seed=cfg.seed)
    demo_ids = [] if chat else sorted({d.id for it in items[:1] for d in demos_for(it)})
    base = None
    if majority is not None and items:
        k = items[0].labels.index(majority)
        base = {"label": majority, "accuracy": round(sum(g == k for g in gold) / len(gold), 4),
                "macro_f1": round(macro_f1(gold, [k] * len(gold), n_labels), 4)}
    extra = {key: {**summary, "delta": delta, "delta_ci95": delta_ci, "config": cfg.model_dump(),
                   "target": target, "demo_ids": demo_ids, "example_prompt": prompts[0] if prompts else "",
                   **({"majority_baseline": base} if base else {})}}
    p, d = summary["parent"], summary["derived"]
    protocol = f"{'0-shot, fine-tuning format' if chat else f'{cfg.shots}-shot'}, {cfg.mode}"
    task = f"{title} ({protocol})"

    def named(metric: str, key: str) -> str:  # with a baseline: which metric, and what always-majority scores
        return f"{title} {metric} ({protocol}; always \"{base['label']}\": {base[key]})" if base else task

    metrics = [with_paired({"task": named("accuracy", "accuracy"), "name": "accuracy", "dataset": dataset,
                            "parent": p["accuracy"], "derived": d["accuracy"], "better": "higher",
                            **({"majority_baseline": base["accuracy"]} if base else {})},
                           res["parent"], res["derived"], n_boot=cfg.bootstrap, seed=cfg.seed)]
    if base:
        rows = {r: [[g, q] for g, q in zip(gold, preds[r])] for r in ("parent", "derived")}
        metrics.append(with_paired({"task": named("macro-F1", "macro_f1"), "name": "macro_f1", "dataset": dataset,
                                    "parent": p["macro_f1"], "derived": d["macro_f1"], "better": "higher",
                                    "majority_baseline": base["macro_f1"]},
                                   rows["parent"], rows["derived"], stat=macro_f1_stat(n_labels),
                                   n_boot=cfg.bootstrap, seed=cfg.seed, per_item_diff=False))

    def ci(c):
        return f"[{c[0]:.3f}, {c[1]:.3f}]" if c else "–"

    def pct(x):
        return "–" if x is None else f"{x:.1%}"

    how = ("0-shot in the fine-tuning format (system: Meditron's instruction; user: the item; the assistant "
           "turn opened)" if chat else
           f"{cfg.shots}-shot (demos {', '.join(demo_ids) or 'none'}; seed {cfg.seed}), Meditron's instruction and "
           "in-context format")
    md = [f"### {title}", "",
          f"{dataset}; {how}, {cfg.mode} scoring{' over option texts' if target == 'text' else ''}. CIs: "
          f"percentile bootstrap over items ({cfg.bootstrap} resamples).", "",
          "| model | accuracy | 95% CI | correct | " + ("macro-F1 | predicted | " if base else "")
          + "next token is an option | truncated prompts |",
          "|---|---:|---:|---:|" + ("---:|---|" if base else "") + "---:|---:|"]
    for role in ("parent", "derived"):
        s = summary[role]
        f1 = (f"{s['macro_f1']:.3f} | " + ", ".join(f"{lab} {c}" for lab, c in s["predicted"].items()) + " | "
              ) if base else ""
        md.append(f"| {role} | {pct(s['accuracy'])} | {ci(s['ci95'])} | {s['correct']}/{s['items']} | {f1}"
                  f"{pct(s['top1_in_options'])} | {s['truncated']} |")
    if base:
        md.append(f"| always \"{base['label']}\" (majority class of the training questions) | {pct(base['accuracy'])} "
                  f"| – | – | {base['macro_f1']:.3f} | – | – | – |")
        md += ["", "Each model's answers shuffled over the items (the same answer counts, none read off its item; "
               f"{cfg.bootstrap} permutations): what that answer mix scores by chance, and the one-sided "
               "permutation p that the model's own pairing of answers to items scores at least as well.", "",
               "| model | accuracy | by chance (95% range) | p | macro-F1 | by chance (95% range) | p |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for role in ("parent", "derived"):
            sh = summary[role]["shuffled"]
            a, f = sh["accuracy"], sh["macro_f1"]
            md.append(f"| {role} | {pct(a['observed'])} | {pct(a['mean'])} ({pct(a['range95'][0])}–"
                      f"{pct(a['range95'][1])}) | {a['p']:g} | {f['observed']:.3f} | {f['mean']:.3f} "
                      f"({f['range95'][0]:.3f}–{f['range95'][1]:.3f}) | {f['p']:g} |")
    if delta is not None:
        md += ["", f"Derived − parent: accuracy {delta:+.3f} (paired 95% CI {ci(delta_ci)})"
               + (f"; macro-F1 {metrics[1]['delta']:+.3f} (paired 95% CI {ci(metrics[1]['ci95'])})" if base else "")
               + "."]
    return EvalOutput(metrics=metrics, extra=extra, markdown="\n".join(md) + "\n", files=files)


def chat_prompt(template, tokenizer, instruction: str, item: MCQItem) -> str:
    """Table 5's prompt for a fine-tuned model: the item as its fine-tuning records show it (system =
    instruction, user = the item), rendered by the recipe's template up to the opened assistant turn."""
    if template is None:
        raise ConfigError("prompt: chat needs the recipe's template")
    return template.prompt([{"role": "system", "content": instruction}, {"role": "user", "content": item.prompt}],
                           tokenizer)


def subset(items: list, n: int | None, seed: int) -> list:
    """``n`` items drawn with a seed, in file order; all when n is None or too large.

    Not the first n: PubMedQA's test_ground_truth.json lists its 276 "yes" items first, so a prefix
    would score an always-"yes" model 100%."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def _recipe_dir(ctx: EvalContext) -> Path:
    src = getattr(ctx.recipe, "source_file", None)
    return Path(src).parent if src else Path.cwd()


@register_eval("pubmedqa", PubMedQAConfig)
def run_pubmedqa(ctx: EvalContext, cfg: PubMedQAConfig) -> EvalOutput:
    from collections import Counter

    from herd.core.paths import resolve_data_path

    path = resolve_data_path(cfg.data, _recipe_dir(ctx))
    parts = pubmedqa_items(path, dev_size=cfg.dev_size, split_seed=cfg.split_seed)
    every = parts[cfg.split]
    items = subset(every, cfg.n, cfg.seed)
    demos = pick_demos(parts["train"], cfg.shots, cfg.seed)
    majority = Counter(it.answer for it in parts["train"]).most_common(1)[0][0]  # never from the scored split
    where = ("PubMedQA PQA-L official test split" if cfg.split == "test" else
             f"PubMedQA PQA-L dev split ({cfg.dev_size} non-test questions, seed {cfg.split_seed})")
    return run_mcq(ctx, cfg, key="pubmedqa", title="PubMedQA", items=items, demos_for=lambda it: demos,
                   dataset=f"{where} ({len(items)} of {len(every)} items"
                   + (f", seeded sample {cfg.seed})" if len(items) < len(every) else ")"),
                   instruction=cfg.instruction or PUBMEDQA_INSTRUCTION, chat=cfg.prompt == "chat", majority=majority)


@register_eval("medqa", MedQAConfig)
def run_medqa(ctx: EvalContext, cfg: MedQAConfig) -> EvalOutput:
    from herd.core.paths import resolve_data_path

    path = resolve_data_path(cfg.data, _recipe_dir(ctx))
    every = medqa_items(path)
    items = subset(every, cfg.n, cfg.seed)
    return run_mcq(ctx, cfg, key="medqa", title="MedQA-USMLE 4-option", items=items,
                   demos_for=lambda it: pick_demos(every, cfg.shots, cfg.seed, exclude=it.id),
                   dataset=f"MedQA-USMLE 4-option test ({len(items)} of {len(every)} items"
                   + (f", seeded sample {cfg.seed}" if len(items) < len(every) else "") + "; demos from the test file)",
                   instruction=cfg.instruction or MEDQA_INSTRUCTION, target=cfg.target)
