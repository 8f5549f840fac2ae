"""The evaluations every SFT recipe can use: held-out response loss and side-by-side answers."""

from __future__ import annotations

from pydantic import Field

from herd.data.tokenize import tokenize_examples
from herd.evals.registry import EvalConfig, EvalContext, EvalOutput, register_eval


class HeldoutLossConfig(EvalConfig):
    pass


class SideBySideConfig(EvalConfig):
    n: int = Field(default=10, ge=0)
    max_new_tokens: int = Field(default=128, gt=0)


@register_eval("heldout_loss", HeldoutLossConfig)
def run_heldout_loss(ctx: EvalContext, cfg: HeldoutLossConfig) -> EvalOutput:
    from herd.core.recipe import eval_max_len

    max_len = eval_max_len(ctx.recipe)
    items, rep = tokenize_examples(ctx.eval_examples, ctx.template, ctx.tokenizer, max_len)
    if not items:
        return EvalOutput(extra={"heldout_data": rep.as_dict()})
    res = {}
    for role in ("parent", "derived"):
        ctx.log(f"held-out response loss, {role} ({len(items)} records)")
        res[role] = ctx.heldout_loss(role, items, max_len, progress=ctx.progress, desc=f"eval heldout_loss {role}")
    p, d = res["parent"], res["derived"]
    ds = f"{ctx.recipe.name} held-out split ({p['records']} records, {p['tokens']} response tokens)"
    if ctx.splits:
        sp = ctx.splits
        other = "dev" if sp["scored"] == "test" else "test"
        ds = (f"{ctx.recipe.name} held-out {sp['scored']} split ({p['records']} records, {p['tokens']} response "
              f"tokens; {other}: {sp[other]} records; settings are chosen on dev)")
    return EvalOutput(metrics=loss_rows(p, d, ds, "held-out response"), extra={"heldout_data": rep.as_dict()})


def loss_rows(p: dict, d: dict, dataset: str, what: str) -> list[dict]:
    """Loss and perplexity rows of two ``heldout_loss`` results on the same items, each with its paired
    bootstrap over records (the token-weighted loss recomputed on every resample)."""
    import math

    from herd.core.paired import ratio_stat, with_paired

    rows = [({"task": f"{what} loss", "name": "loss", "dataset": dataset, "parent": round(p["loss"], 4),
              "derived": round(d["loss"], 4), "better": "lower"}, ratio_stat, 4),
            ({"task": f"{what} perplexity", "name": "perplexity", "dataset": dataset,
              "parent": round(p["perplexity"], 3), "derived": round(d["perplexity"], 3), "better": "lower"},
             lambda v: math.exp(min(ratio_stat(v), 50)), 3)]
    return [with_paired(row, p["per_record"], d["per_record"], stat=stat, digits=digits) for row, stat, digits in rows]


def prompt_messages(ex) -> list[dict]:
    """The conversation up to (not including) its final assistant reply."""
    msgs = ex.messages
    if not msgs or msgs[-1]["role"] != "assistant":
        return []
    return msgs[:-1]


@register_eval("side_by_side", SideBySideConfig)
def run_side_by_side(ctx: EvalContext, cfg: SideBySideConfig) -> EvalOutput:
    from herd.engine.generation import generate  # torch: only when the eval runs

    exs = [ex for ex in ctx.eval_examples if prompt_messages(ex)][: cfg.n]
    if not exs:
        return EvalOutput()
    prompts = [ctx.template.prompt(prompt_messages(ex), ctx.tokenizer) for ex in exs]
    answers = {}
    for role in ("parent", "derived"):
        ctx.log(f"greedy answers, {role} ({len(exs)} instructions)")
        answers[role] = generate(ctx.model(role), ctx.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                 stop=ctx.template.stop_strings(ctx.tokenizer), progress=ctx.progress,
                                 desc=f"eval side_by_side {role}")
    samples = []
    for i, ex in enumerate(exs):
        user = prompt_messages(ex)[-1]
        samples.append({"instruction": user["content"], "input": user.get("input", ""),
                        "reference": ex.messages[-1]["content"], "parent": answers["parent"][i],
                        "derived": answers["derived"][i]})
    return EvalOutput(extra={"samples": samples})
