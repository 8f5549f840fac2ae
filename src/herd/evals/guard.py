"""The ``guard`` eval: Llama Guard's protocol (§6.4) on held-out moderation data, parent vs derived.

Both models read the same ``llama_guard`` prompt (the parent zero-shot). Scores: first-token
P(unsafe) for the binary label (any category = unsafe), per-category scores as configured.
Thresholds for precision/recall/F1 are chosen on the dev split (best F1), metrics are reported on the
test split, AUPRC is threshold-free. The derived model's thresholds go into the artifact's
``guard.json`` so ``herd classify`` and the server use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from herd.core.errors import ConfigError
from herd.data.readers.moderation import (
    LabelMapping,
    ModerationRecord,
    make_mapping,
    read_moderation_records,
    split_records,
)
from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval
from herd.guard.classifier import Guard, GuardSettings
from herd.templates.taxonomy import load_taxonomy


class GuardEvalConfig(EvalConfig):
    """``data``: a moderation-format file (default: the recipe's ``moderation`` data source, whose
    reader options, split included, are reused so dev/test never overlap training)."""

    data: str | None = None
    options: dict = {}  # reader options for ``data``: taxonomy, label_map, dev_size, test_size, split_seed
    max_dev: int | None = Field(default=None, gt=0)  # score only this many dev records
    max_test: int | None = Field(default=None, gt=0)
    max_len: int = Field(default=4096, ge=64)  # longer prompts are skipped and counted, never cut
    per_category: Literal["codes", "one_vs_all", "none"] = "codes"
    batch_tokens: int = Field(default=8192, ge=512)
    # "dev" scores the dev split instead of test (thresholds stay 0.5): for choosing settings without
    # touching the test split, which a final run scores once
    split: Literal["test", "dev"] = "test"


@dataclass
class GuardData:
    mapping: LabelMapping
    dev: list[ModerationRecord]
    test: list[ModerationRecord]
    skipped: int = 0
    description: str = ""  # for the markdown section
    short: str = ""  # for scorecard rows


@dataclass
class GuardReport:
    overall: dict
    per_category: dict[str, dict] = field(default_factory=dict)
    threshold: float = 0.5
    category_thresholds: dict[str, float] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # panel → (y, s) on test


def category_labels(recs: list[ModerationRecord], mapping: LabelMapping, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows whose label for ``name`` is known, their 0/1 labels)."""
    rows = [i for i, r in enumerate(recs) if name in mapping.known(r)]
    return np.array(rows, dtype=int), np.array([int(name in mapping.violated(recs[i])) for i in rows], dtype=int)


def evaluate_guard(guard: Guard, data: GuardData, *, choose_on_dev: bool = True, progress: bool = True
                   ) -> GuardReport:
    """Score dev and test, choose thresholds on dev (or keep the guard's), measure on test; ``progress``
    reports records scored (``[eval guard <model> test] 120/680 records …``)."""
    from herd.evals.guard_metrics import binary_metrics, choose_threshold  # scikit-learn: only when scoring

    names = [n for n in guard.taxonomy.names if n in data.mapping.mapped()]
    desc = f"eval guard {guard.name}"
    p_dev, c_dev = guard.scores([r.messages() for r in data.dev], progress=progress, desc=f"{desc} dev") \
        if data.dev else (np.zeros(0), None)
    p_test, c_test = guard.scores([r.messages() for r in data.test], progress=progress, desc=f"{desc} test")
    y_dev = np.array([int(r.unsafe) for r in data.dev], dtype=int)
    y_test = np.array([int(r.unsafe) for r in data.test], dtype=int)
    s = guard.settings
    thr = choose_threshold(y_dev, p_dev, s.threshold) if choose_on_dev and data.dev else s.threshold
    rep = GuardReport(overall=binary_metrics(y_test, p_test, thr), threshold=thr,
                      curves={"unsafe (binary)": (y_test, p_test)})
    if c_test is None:
        return rep
    for name in names:
        k = guard.taxonomy.names.index(name)
        t = s.category_thresholds.get(name, 0.5)
        if choose_on_dev and data.dev:
            rows, y = category_labels(data.dev, data.mapping, name)
            t = choose_threshold(y, c_dev[rows, k], t) if len(rows) else t
        rows, y = category_labels(data.test, data.mapping, name)
        rep.category_thresholds[name] = t
        rep.per_category[name] = binary_metrics(y, c_test[rows, k], t)
        rep.curves[name] = (y, c_test[rows, k])
    return rep


def load_guard_data(path: str | Path, options: dict, tokenizer, cfg: GuardEvalConfig, *, whole_file: bool = False
                    ) -> GuardData:
    """Dev/test records of a moderation file (the reader's split), without prompts over ``max_len``."""
    from herd.templates import get_template

    allowed = {"taxonomy", "label_map", "dev_size", "test_size", "split_seed"}
    mapping = make_mapping(load_taxonomy(options.get("taxonomy")), options.get("label_map"))
    records = read_moderation_records(path, list(mapping.label_map))
    if whole_file:
        parts = split_records(records, dev_size=options.get("dev_size", 0), test_size=0, seed=options.get("split_seed", 42))
        dev, test = parts["dev"], parts["train"]
    else:
        kw = {k: v for k, v in options.items() if k in allowed - {"taxonomy", "label_map"}}
        parts = split_records(records, dev_size=kw.get("dev_size", 100), test_size=kw.get("test_size", 250),
                              seed=kw.get("split_seed", 42))
        dev, test = parts["dev"][: cfg.max_dev], parts["test"][: cfg.max_test]
        if cfg.split == "dev":
            dev, test = [], dev
    tmpl = get_template("llama_guard")
    cats = mapping.taxonomy.prompt_categories()

    def fits(r: ModerationRecord) -> bool:
        return len(tokenizer(tmpl.prompt(r.messages(), tokenizer, categories=cats),
                             add_special_tokens=False)["input_ids"]) + 4 <= cfg.max_len

    kept_dev, kept_test = [r for r in dev if fits(r)], [r for r in test if fits(r)]
    skipped = len(dev) + len(test) - len(kept_dev) - len(kept_test)
    if not kept_test:
        raise ConfigError(f"{path}: no test records left to evaluate (max_len {cfg.max_len}, {skipped} skipped)")
    desc = (f"{Path(path).name}: {len(kept_test)} test records ({sum(r.unsafe for r in kept_test)} unsafe), "
            f"{len(kept_dev)} dev" + (f"; {skipped} over {cfg.max_len} tokens skipped" if skipped else ""))
    if cfg.split == "dev":
        desc = f"{Path(path).name}: the DEV split, {len(kept_test)} records, for choosing settings (no thresholds chosen)"
    return GuardData(mapping, kept_dev, kept_test, skipped, desc,
                     f"{Path(path).stem} {cfg.split} ({len(kept_test)} records, {sum(r.unsafe for r in kept_test)} unsafe)")


def _source(ctx: EvalContext, cfg: GuardEvalConfig) -> tuple[Path, dict]:
    from herd.core.paths import resolve_data_path

    recipe_dir = Path(ctx.recipe.source_file).parent if ctx.recipe.source_file else Path.cwd()
    if cfg.data:
        return resolve_data_path(cfg.data, recipe_dir), dict(cfg.options)
    for src in ctx.recipe.data:
        if src.format == "moderation":
            return resolve_data_path(src.path, recipe_dir), dict(src.options)
    raise ConfigError(f"{ctx.recipe.source_file}: evals.guard needs data: (no moderation-format data source)")


def _r(x):
    return None if x is None else round(x, 4)


def metric_rows(reports: dict[str, GuardReport], dataset: str, split: str = "test") -> list[dict]:
    """Scorecard rows, AUPRC (the paper's metric) first, each with its paired bootstrap over test items
    (the same records scored by both models; thresholds stay the ones chosen on dev)."""
    from herd.core.paired import auprc_stat, with_paired

    p, d = reports["parent"], reports["derived"]

    def compare(row: dict, panel: str, p_thr: float, d_thr: float) -> dict:
        (y, sp), (_, sd) = p.curves[panel], d.curves[panel]
        if row["name"].startswith("auprc"):
            return with_paired(row, np.c_[y, sp], np.c_[y, sd], stat=auprc_stat)
        return with_paired(row, np.c_[y, sp >= p_thr], np.c_[y, sd >= d_thr], stat=_threshold_stat(row["name"]))

    rows = [compare({"task": f"guard {m} (binary unsafe, {split} split)", "name": m, "dataset": dataset,
                     "parent": _r(p.overall[m]), "derived": _r(d.overall[m]), "better": "higher"},
                    "unsafe (binary)", p.threshold, d.threshold)
            for m in ("auprc", "f1", "precision", "recall")]
    for name in d.per_category:
        for m in ("auprc", "f1"):
            rows.append(compare({"task": f"guard {m}: {name}", "name": f"{m}/{name}", "dataset": dataset,
                                 "parent": _r(p.per_category[name][m]), "derived": _r(d.per_category[name][m]),
                                 "better": "higher", "category": name,
                                 "group": f"guard {m} per category ({split} split)"},
                                name, p.category_thresholds[name], d.category_thresholds[name]))
    return rows


def pr_curves(reports: dict[str, GuardReport], split: str = "test") -> list[dict]:
    """The PNG's precision-recall panels as data (one chart per panel, a series per model), for pages
    that draw them (``herd ui``): ``{"title", "xlabel", "ylabel", "series": [{"name", "points"}]}``."""
    from herd.evals.guard_metrics import pr_points  # scikit-learn: only when scoring

    charts = []
    for panel in next(iter(reports.values())).curves:
        series = [{"name": role, "points": pr_points(*rep.curves[panel])} for role, rep in reports.items()
                  if panel in rep.curves]
        if any(s["points"] for s in series):
            charts.append({"title": f"precision-recall: {panel} ({split} split)", "xlabel": "recall",
                           "ylabel": "precision", "series": series})
    return charts


def _threshold_stat(name: str):
    """precision/recall/F1 of rows ``(label, predicted)``; NaN where undefined (as scikit-learn's 0 would
    bias the bootstrap)."""
    metric = name.split("/")[0]

    def stat(v: np.ndarray) -> float:
        y, pred = v[:, 0], v[:, 1]
        tp, fp, fn = float((y * pred).sum()), float(((1 - y) * pred).sum()), float((y * (1 - pred)).sum())
        if metric == "precision":
            return tp / (tp + fp) if tp + fp else float("nan")
        if metric == "recall":
            return tp / (tp + fn) if tp + fn else float("nan")
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")

    return stat


def markdown(reports: dict[str, GuardReport], data: GuardData, cfg_per_category: str, png: str | None) -> str:
    lines = ["## Safety classification (Llama Guard protocol)", "",
             f"Data: {data.description}. Binary label: any category = unsafe. Score: first-token P(unsafe); "
             f"per-category scores: {cfg_per_category}. Thresholds: best F1 on the dev split.", "",
             "| model | category | n | positives | threshold | precision | recall | F1 | AUPRC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for role, rep in reports.items():
        for cat, m in [("unsafe (binary)", rep.overall), *rep.per_category.items()]:
            vals = [f"{m[k]:.3f}" if m[k] is not None else "n/a" for k in ("precision", "recall", "f1", "auprc")]
            lines.append(f"| {role} | {cat} | {m['n']} | {m['positives']} | {m['threshold']:.4g} | " + " | ".join(vals) + " |")
    if png:
        lines += ["", f"Precision-recall curves: `{png}`."]
    return "\n".join(lines) + "\n"


def pr_png(reports: dict[str, GuardReport], path: Path) -> Path:
    from herd.evals.guard_metrics import pr_curve_png  # scikit-learn: only when scoring

    panels = {panel: {role: rep.curves[panel] for role, rep in reports.items() if panel in rep.curves}
              for panel in next(iter(reports.values())).curves}
    return pr_curve_png(panels, path, "guard precision-recall (test split)")


@register_eval("guard", GuardEvalConfig)
def run_guard_eval(ctx: EvalContext, cfg: GuardEvalConfig) -> EvalOutput:
    path, options = _source(ctx, cfg)
    data = load_guard_data(path, options, ctx.tokenizer, cfg)
    settings = GuardSettings(taxonomy=data.mapping.taxonomy, per_category=cfg.per_category)
    reports = {}
    for role in ("parent", "derived"):
        ctx.log(f"guard scoring, {role}: {len(data.dev)} dev + {len(data.test)} test records")
        guard = Guard(model=ctx.model(role), tokenizer=ctx.tokenizer, name=role,
                      settings=GuardSettings(taxonomy=settings.taxonomy, per_category=cfg.per_category),
                      batch_tokens=cfg.batch_tokens)
        reports[role] = evaluate_guard(guard, data, progress=ctx.progress)
    d = reports["derived"]
    GuardSettings(taxonomy=settings.taxonomy, per_category=cfg.per_category, threshold=d.threshold,
                  category_thresholds=d.category_thresholds,
                  chosen_on=f"best F1 on the dev split of {path.name} ({len(data.dev)} records)" if data.dev
                  else "default 0.5 (a run scored on the dev split chooses no thresholds)").write(ctx.out_dir)
    png = pr_png(reports, Path(ctx.out_dir) / "guard_pr_curve.png")
    extra = {"guard": {role: {"overall": r.overall, "per_category": r.per_category, "threshold": r.threshold,
                              "category_thresholds": r.category_thresholds} for role, r in reports.items()},
             "guard_data": {"file": str(path), "dev": len(data.dev), "test": len(data.test), "skipped": data.skipped},
             "guard_pr_curves": pr_curves(reports, cfg.split)}
    return EvalOutput(metrics=metric_rows(reports, data.short, cfg.split), extra=extra,
                      markdown=markdown(reports, data, cfg.per_category, png.name), files=[png.name, "guard.json"])
