"""The scorecard: parent vs derived on the recipe's own evaluation, with every deviation listed.

A tiny profile keeps the published protocol and shrinks sizes; its numbers are never presented as the
paper's. Published results are quoted with their source and whether they are comparable at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.artifacts import atomic_write_text
from herd.core.paired import fmt_delta, headline
from herd.core.progress import phase
from herd.core.recipe import Recipe
from herd.core.registry import EVALS
from herd.data.records import Example
from herd.evals.registry import EvalContext
from herd.templates import Template


def evaluate_pair(recipe: Recipe, template: Template, parent_path: Path, derived_path: Path,
                  eval_examples: list[Example], *, progress: bool = True, stages: list | None = None,
                  splits: dict | None = None) -> dict:
    """Run the recipe's evals on parent and derived with identical inputs; returns the scorecard dict."""
    from herd.base import load_tokenizer

    ctx = EvalContext(recipe=recipe, template=template, tokenizer=load_tokenizer(derived_path),
                      eval_examples=eval_examples, parent_path=Path(parent_path),
                      derived_path=Path(derived_path), out_dir=Path(derived_path), progress=progress,
                      stages=list(stages or []), splits=splits)
    metrics, extra, sections, not_run = [], ({"splits": splits} if splits else {}), [], []
    evals = configured_evals(recipe)
    for k, (name, cfg) in enumerate(evals, 1):
        why = cfg.unavailable(_recipe_dir(recipe))
        if why:
            not_run.append({"eval": name, "why": why})
            continue
        _, fn = EVALS[name]
        ctx.eval_name = name
        with phase("eval", f"{k}/{len(evals)} {name}", enabled=progress):
            try:
                out = fn(ctx, cfg)
            finally:
                ctx.end_model_phase()
        metrics += out.metrics
        extra.update(out.extra)
        if out.markdown:
            sections.append(out.markdown)
    return {
        "recipe": recipe.name, "title": recipe.title, "profile": recipe.profile,
        "paper_base": recipe.paper_base, "template": template.name,
        "metrics": metrics,
        "headline": headline(metrics),
        "published": [p.model_dump() for p in recipe.published],
        "deviations": list(recipe.deviations) + [f"evals.{n['eval']} not run: {n['why']}" for n in not_run],
        "not_run": not_run,
        "samples": extra.pop("samples", []),
        "extra": extra,
        "sections": sections,
    }


def _recipe_dir(recipe: Recipe) -> Path:
    return Path(recipe.source_file).parent if recipe.source_file else Path.cwd()


def configured_evals(recipe: Recipe) -> list[tuple[str, object]]:
    """The recipe's enabled evals as (name, validated config)."""
    out = []
    for name, settings in recipe.evals.items():
        cfg = EVALS[name][0].model_validate(settings or {})
        if cfg.enabled:
            out.append((name, cfg))
    return out


def unavailable_evals(recipe: Recipe) -> dict[str, str]:
    """Evals that will be skipped for a missing input, with the reason (checked before training)."""
    return {name: why for name, cfg in configured_evals(recipe) if (why := cfg.unavailable(_recipe_dir(recipe)))}


def to_markdown(card: dict, training: dict | None = None) -> str:
    lines = [f"# Scorecard: {card['title']} — profile `{card['profile']}`", ""]
    if card["profile"] != "full":
        lines += [f"> A `{card['profile']}` profile keeps the published protocol and shrinks sizes. These "
                  "numbers describe this run only; they are NOT the paper's numbers.", ""]
    run = card.get("run")
    if run:
        wall = run.get("wall_seconds")
        legs = run.get("earlier_legs") or []
        peak = run.get("peak_rss_mb")
        lines += [f"Reproduce: `{run['command']}`" + (f" ({wall / 60:.1f} min to this scorecard"
                                                      + (f", peak RSS {peak / 1024:.2f} GiB" if peak else "")
                                                      + f" on {run.get('machine')})" if wall else ""), ""]
        stages = run.get("stages") or []
        if stages:
            lines += ["Stages: " + "; ".join(
                f"`{st['folder']}` ({st.get('arithmetic') or 'arithmetic not recorded'}"
                + (f", sampling {st['sampling_arithmetic']}" if st.get("sampling_arithmetic") else "")
                + (f", scoring {st['scoring_arithmetic']}" if st.get("scoring_arithmetic") else "")
                + (", reused: finished before this run" if st.get("reused") else ", trained by this run") + ")"
                for st in stages) + ".", ""]
        if legs:
            lines += [f"This run was resumed (`--resume`): the wall time above is its last leg's, started "
                      f"{run.get('started')}; stages finished in {len(legs)} earlier leg(s) started "
                      + ", ".join(leg["started"] for leg in legs) + ".", ""]
    sp = (card.get("extra") or {}).get("splits")
    if sp:
        lines += [f"Held-out records: {sp['held_out']}, split into dev ({sp['dev']}, for choosing settings) and "
                  f"test ({sp['test']}); this scorecard scores the **{sp['scored']}** split.", ""]
    h = card.get("headline")
    if h and h.get("delta") is not None:
        lines += [f"**Headline: {h['name']}**: parent {h['parent']} → derived {h['derived']}, derived − parent "
                  f"{fmt_delta(h)} (paired 95% CI, n = {h['n']}): **{h['verdict']}**.", ""]
    lines += ["## Parent vs derived", "",
              "| evaluation | dataset | parent | derived | better | derived − parent [paired 95% CI] | n | verdict |",
              "|---|---|---:|---:|---|---|---:|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['task']} | {m['dataset']} | {m['parent']} | {m['derived']} | {m['better']} | "
                     f"{fmt_delta(m)} | {m.get('n', '')} | {m.get('verdict') or '–'} |")
    if training and all(k in training for k in ("steps", "tokens", "trained_tokens", "seconds", "tokens_per_s",
                                                  "first_loss", "final_loss")):
        lines += ["", "## Training (last stage)", "",
                  f"{training['steps']} optimizer steps, {training['tokens']:,} tokens "
                  f"({training['trained_tokens']:,} trained) in {training['seconds']} s "
                  f"= {training['tokens_per_s']} tokens/s; loss {training['first_loss']:.4f} → "
                  f"{training['final_loss']:.4f}."]
    for section in card.get("sections", []):
        lines += ["", section.rstrip()]
    if card["published"]:
        lines += ["", "## Published results (for reference, not comparable unless marked)", ""]
        for p in card["published"]:
            tag = "comparable" if p["comparable"] else f"not comparable: {p['why_not'] or 'different scale'}"
            lines.append(f"- {p['claim']} ({p['source']}; {tag})")
    lines += ["", "## Deviations from the paper", ""] + [f"- {d}" for d in card["deviations"]]
    if card["samples"]:
        lines += ["", "## Greedy answers on held-out instructions", ""]
        for i, s in enumerate(card["samples"], 1):
            lines += [f"### {i}. {_one_line(s['instruction'])}", ""]
            if s["input"]:
                lines += [f"*Input:* {_one_line(s['input'])}", ""]
            lines += [f"- **reference:** {_one_line(s['reference'])}", f"- **parent:** {_one_line(s['parent'])}",
                      f"- **derived:** {_one_line(s['derived'])}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _one_line(text: str, limit: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= limit else t[: limit - 1] + "…"


def write_scorecard(folder: Path, card: dict, training: dict | None = None) -> str:
    md = to_markdown(card, training)
    atomic_write_text(folder / "scorecard.json", json.dumps(card, indent=2) + "\n")
    atomic_write_text(folder / "scorecard.md", md)
    return md
