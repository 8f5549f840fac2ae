"""The ``sft`` stage: masked causal-LM fine-tuning of a parent artifact on templated records.

Receives a parent (a resolved base or the previous stage's artifact) and returns the path of a new
artifact. Full fine-tuning or LoRA (peft; the adapter is kept in ``adapter/`` and merged into the
saved weights so the artifact loads in plain transformers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from herd.artifacts import (
    model_card,
    new_lineage,
    publish,
    save_model_folder,
    staging_dir,
    template_record,
    write_lineage,
)
from herd.base import BaseRef, load_model, load_tokenizer
from herd.core.errors import HerdError
from herd.core.recipe import SFTStage, TrainStage
from herd.data.records import Example
from herd.data.tokenize import tokenize_examples
from herd.engine.training import LoopConfig, dist_env, full_state_dict, save_loss_png, train
from herd.templates import Template


def loop_config(cfg: TrainStage, progress: bool = True) -> LoopConfig:
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, global_batch=cfg.global_batch,
                      micro_batch_rows=cfg.micro_batch_rows, row_len=cfg.max_len, pack=cfg.pack,
                      warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio,
                      weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                      grad_clip=cfg.grad_clip,
                      seed=cfg.seed, precision=cfg.precision, checkpoint_every=cfg.checkpoint_every,
                      fsdp=cfg.fsdp, gradient_checkpointing=cfg.gradient_checkpointing, progress=progress)


def apply_lora(model, spec):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                            target_modules=list(spec.target_modules), task_type="CAUSAL_LM"))


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
    model = load_model(parent)
    if cfg.method == "lora":
        import torch

        torch.manual_seed(cfg.seed)  # LoRA's A matrices are random: same seed, same run
        model = apply_lora(model, cfg.lora)
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    result = train(model, items, loop_config(cfg, progress), work, pad_id=tok.pad_token_id, resume=resume)
    summary = {"steps": result.steps, "tokens": result.tokens, "trained_tokens": result.trained_tokens,
               "seconds": round(result.seconds, 1), "tokens_per_s": round(result.tokens_per_s, 1),
               "final_loss": result.history[-1]["loss"] if result.history else None,
               "first_loss": result.history[0]["loss"] if result.history else None,
               "data": report.as_dict(), "world_size": world}
    publish_stage(cfg, model, tok, template, parent, result, summary, out, work, name=name, recipe=recipe,
                  data=data, data_report=report.as_dict())
    return out, summary


def publish_stage(cfg, model, tok, template: Template, parent: BaseRef, result, summary: dict, out: Path,
                  work: Path, *, name: str, recipe: dict | None, data: list[dict] | None, data_report: dict,
                  prepare_plain=None) -> None:
    """Gather (distributed), merge LoRA, and write the artifact atomically with its lineage.

    ``prepare_plain(model)`` re-applies a stage's model changes (added tokens, RoPE base) when a plain
    model has to be rebuilt from the gathered state on rank 0."""
    rank, world = dist_env()
    state = full_state_dict(model) if world > 1 else None  # a collective: every rank takes part
    if rank != 0:
        return
    tmp = staging_dir(out)
    if world > 1:  # the trained model is sharded/wrapped: rebuild a plain one from the gathered state
        model = load_model(parent)
        if prepare_plain is not None:
            prepare_plain(model)
        if cfg.method == "lora":
            model = apply_lora(model, cfg.lora)
        model.load_state_dict(state)
    if cfg.method == "lora":
        model.save_pretrained(tmp / "adapter")
        model = model.merge_and_unload()
    save_model_folder(model, tok, template, tmp)
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in result.history))
    save_loss_png(result.history, tmp / "loss.png", title=f"{name}: {cfg.name} loss")
    lineage = new_lineage(name, parent=_parent_record(parent), template=template_record(template, tok),
                          recipe=recipe, stage={"name": cfg.name, "kind": cfg.kind,
                                                "config": cfg.model_dump(mode="json")}, data=data)
    lineage["metrics"] = {k: v for k, v in summary.items() if k != "data"} | {"data_report": data_report}
    lineage = write_lineage(tmp, lineage)
    (tmp / "README.md").write_text(model_card(lineage))
    publish(tmp, out)
    shutil.rmtree(work, ignore_errors=True)


def _parent_record(parent: BaseRef) -> dict:
    rec = parent.describe()
    rec.pop("path", None)
    rec["lineage_id"] = (parent.lineage or {}).get("id")
    return rec
