"""The scorecard: parent vs derived on the recipe's own evaluation, with every deviation listed.

A tiny profile keeps the published protocol and shrinks sizes; its numbers are never presented as the
paper's. Published results are quoted with their source and whether they are comparable at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.artifacts import atomic_write_text
from herd.data.records import Example
from herd.data.tokenize import tokenize_examples
from herd.evals.heldout import heldout_loss
from herd.generation import generate
from herd.recipe import Recipe
from herd.templates import Template


def evaluate_pair(recipe: Recipe, template: Template, parent_path: Path, derived_path: Path,
                  eval_examples: list[Example], *, progress: bool = True) -> dict:
    """Score parent and derived with identical inputs; returns the scorecard dict."""
    from herd.base import load_model, load_tokenizer

    tok = load_tokenizer(derived_path)
    max_len = recipe.stages[-1].max_len
    items, rep = tokenize_examples(eval_examples, template, tok, max_len)
    metrics, samples = [], []
    results = {}
    sbs = recipe.evals.side_by_side
    sbs_examples = [ex for ex in eval_examples if _prompt_messages(ex)][: sbs.n] if sbs.enabled else []
    for role, path in (("parent", parent_path), ("derived", derived_path)):
        model = load_model(path)
        out = {}
        if recipe.evals.heldout_loss.enabled and items:
            if progress:
                print(f"[eval] held-out response loss, {role} ({len(items)} records)")
            out["heldout"] = heldout_loss(model, items, tok.pad_token_id, row_len=max_len)
        if sbs_examples:
            if progress:
                print(f"[eval] greedy answers, {role} ({len(sbs_examples)} instructions)")
            prompts = [template.prompt(_prompt_messages(ex), tok) for ex in sbs_examples]
            out["answers"] = generate(model, tok, prompts, max_new_tokens=sbs.max_new_tokens,
                                      stop=template.stop_strings(tok))
        results[role] = out
        del model
    if "heldout" in results["parent"]:
        p, d = results["parent"]["heldout"], results["derived"]["heldout"]
        ds = f"{recipe.name} held-out split ({p['records']} records, {p['tokens']} response tokens)"
        metrics.append({"task": "held-out response loss", "name": "loss", "dataset": ds,
                        "parent": round(p["loss"], 4), "derived": round(d["loss"], 4), "better": "lower"})
        metrics.append({"task": "held-out response perplexity", "name": "perplexity", "dataset": ds,
                        "parent": round(p["perplexity"], 3), "derived": round(d["perplexity"], 3),
                        "better": "lower"})
    for i, ex in enumerate(sbs_examples):
        user = _prompt_messages(ex)[-1]
        samples.append({"instruction": user["content"], "input": user.get("input", ""),
                        "reference": ex.messages[-1]["content"],
                        "parent": results["parent"]["answers"][i], "derived": results["derived"]["answers"][i]})
    return {
        "recipe": recipe.name, "title": recipe.title, "profile": recipe.profile,
        "paper_base": recipe.paper_base, "template": template.name,
        "metrics": metrics,
        "headline": ({"name": metrics[0]["task"], "parent": metrics[0]["parent"],
                      "derived": metrics[0]["derived"], "better": "lower"} if metrics else None),
        "published": [p.model_dump() for p in recipe.published],
        "deviations": list(recipe.deviations),
        "eval_data": rep.as_dict(),
        "samples": samples,
    }


def _prompt_messages(ex: Example) -> list[dict]:
    """The conversation up to (not including) its final assistant reply."""
    msgs = ex.messages
    if not msgs or msgs[-1]["role"] != "assistant":
        return []
    return msgs[:-1]


def to_markdown(card: dict, training: dict | None = None) -> str:
    lines = [f"# Scorecard: {card['title']} — profile `{card['profile']}`", ""]
    if card["profile"] != "full":
        lines += [f"> A `{card['profile']}` profile keeps the published protocol and shrinks sizes. These "
                  "numbers describe this run only; they are NOT the paper's numbers.", ""]
    lines += ["## Parent vs derived", "", "| evaluation | dataset | parent | derived | better |",
              "|---|---|---:|---:|---|"]
    for m in card["metrics"]:
        lines.append(f"| {m['task']} | {m['dataset']} | {m['parent']} | {m['derived']} | {m['better']} |")
    if training:
        lines += ["", "## Training", "",
                  f"{training['steps']} optimizer steps, {training['tokens']:,} tokens "
                  f"({training['trained_tokens']:,} trained) in {training['seconds']} s "
                  f"= {training['tokens_per_s']} tokens/s; loss {training['first_loss']:.4f} → "
                  f"{training['final_loss']:.4f}."]
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
