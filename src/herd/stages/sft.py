"""The ``sft`` stage: masked causal-LM fine-tuning of a parent artifact on templated records.

Receives a parent (a resolved base or the previous stage's artifact) and returns the path of a new
artifact. Full fine-tuning or LoRA (peft; the adapter is kept in ``adapter/`` and merged into the
saved weights so the artifact loads in plain transformers).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from herd.base import BaseRef, load_tokenizer
from herd.core.errors import HerdError
from herd.core.recipe import SFTStage
from herd.core.registry import STAGES
from herd.data.records import Example
from herd.data.tokenize import tokenize_examples
from herd.engine.training import dist_env, loss_kernel_name, train
from herd.stages import StageContext
from herd.stages.common import (  # noqa: F401  (apply_lora, loop_config: re-exported)
    add_adapter,
    apply_lora,
    load_for_training,
    loop_config,
    publish_stage,
)
from herd.templates import Template


def run_sft(cfg: SFTStage, parent: BaseRef, template: Template, examples: list[Example], out: Path, *,
            name: str, resume: bool = False, recipe: dict | None = None, data: list[dict] | None = None,
            progress: bool = True) -> tuple[Path, dict]:
    """Train and write the artifact at ``out``; returns (path, training summary)."""
    rank, world = dist_env()
    tok = load_tokenizer(parent)
    items, report = tokenize_examples(examples, template, tok, cfg.max_len)
    if not items:
        raise HerdError(f"stage {cfg.name}: no usable training records ({report.summary()})")
    if rank == 0:
        print(f"[{cfg.name}] data: {report.summary()}")
    model, backend = load_for_training(parent, cfg)
    model = add_adapter(model, cfg)
    if cfg.shared_prefix:  # its suffixes attend to the cached prefix through SDPA with an explicit mask
        backend = dict(backend, attention="sdpa", attention_why="shared prefix: explicit prefix + suffix mask")
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    grouping = None
    if cfg.shared_prefix:
        from herd.engine.shared_prefix import train_shared_prefix

        result, grouping = train_shared_prefix(model, items, loop_config(cfg, progress), work, pad_id=tok.pad_token_id,
                                               resume=resume, desc=cfg.name)
        if rank == 0:
            print(f"[{cfg.name}] shared prefixes: {grouping['groups']} groups of ~{grouping['examples_per_group']} "
                  f"examples, ~{grouping['mean_prefix_tokens']:.0f} prefix tokens each; "
                  f"{grouping['tokens_computed']:,} tokens computed for {grouping['tokens_as_packed']:,} "
                  f"({grouping['saving']}x fewer)", flush=True)
    else:
        result = train(model, items, loop_config(cfg, progress), work, pad_id=tok.pad_token_id, resume=resume)
    summary = {"steps": result.steps, "tokens": result.tokens, "trained_tokens": result.trained_tokens,
               "seconds": round(result.seconds, 1), "tokens_per_s": round(result.tokens_per_s, 1),
               "final_loss": result.history[-1]["loss"] if result.history else None,
               "first_loss": result.history[0]["loss"] if result.history else None,
               "data": report.as_dict(), "world_size": world, "backend": backend | {"loss": loss_kernel_name()}, **({"shared_prefix": grouping} if grouping else {})}
    publish_stage(cfg, model, tok, template, parent, result, summary, out, work, name=name, recipe=recipe,
                  data=data, data_report=report.as_dict())
    return out, summary


@STAGES.register("sft")
def run(cfg: SFTStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_sft(cfg, ctx.parent, ctx.template, ctx.train, ctx.out, name=ctx.name, resume=ctx.resume,
                   recipe=ctx.recipe, progress=ctx.progress, data=ctx.data)
