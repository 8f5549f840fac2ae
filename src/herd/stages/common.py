"""What every trained stage kind shares: the loop settings from a stage config, and one way to publish
an artifact (metrics, loss plot, lineage, model card, atomic rename). Not a stage itself."""

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
from herd.base import BaseRef, load_model
from herd.engine.loading import add_adapter, load_for_training, loop_config, merge_into_full_precision  # noqa: F401
from herd.engine.lora import apply_lora
from herd.engine.training import dist_env, full_state_dict, save_loss_png
from herd.templates import Template


def parent_record(parent: BaseRef) -> dict:
    """The lineage's ``parent``: the base's description without its local path, plus its lineage id."""
    rec = parent.describe()
    rec.pop("path", None)
    rec["lineage_id"] = (parent.lineage or {}).get("id")
    return rec

def finish_artifact(tmp: Path, out: Path, *, name: str, parent: BaseRef, template_rec: dict, cfg,
                    recipe: dict | None, data: list[dict], metrics: dict, history: list[dict] | None = None,
                    extra_md: str = "") -> Path:
    """Write metrics, loss plot, lineage.json and README into the staging folder, then publish it."""
    if history is not None:
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        if history:
            save_loss_png(history, tmp / "loss.png", title=f"{name}: {cfg.name} loss")
    from herd.engine.training import arithmetic_record

    # what `auto` resolved to where the stage trained (its folder hash cannot say)
    stage = {"name": cfg.name, "kind": cfg.kind, "config": cfg.model_dump(mode="json"), **arithmetic_record(cfg)}
    lineage = new_lineage(name, parent=parent_record(parent), template=template_rec, recipe=recipe,
                          stage=stage, data=data)
    lineage["metrics"] = metrics
    lineage = write_lineage(tmp, lineage)
    (tmp / "README.md").write_text(model_card(lineage, extra_md=extra_md))
    return publish(tmp, out)

def publish_stage(cfg, model, tok, template: Template, parent: BaseRef, result, summary: dict, out: Path,
                  work: Path, *, name: str, recipe: dict | None, data: list[dict] | None, data_report: dict,
                  prepare_plain=None) -> None:
    """Gather (distributed), merge LoRA, and write the artifact atomically with its lineage.

    ``prepare_plain(model)`` re-applies a stage's model changes (added tokens, RoPE base) when a plain
    model has to be rebuilt from the gathered state on rank 0."""
    from herd.core.phases import record

    with record("save artifact"):
        rank, world = dist_env()
        gather = world > 1 and cfg.method != "qlora"  # qlora never shards (DDP): rank 0 holds the adapter
        state = full_state_dict(model) if gather else None  # a collective: every rank takes part
        if rank != 0:
            return
        tmp = staging_dir(out)
        if cfg.method == "qlora":
            model.save_pretrained(tmp / "adapter")
            model = merge_into_full_precision(model, parent, cfg, prepare_plain)
        elif world > 1:  # the trained model is sharded/wrapped: rebuild a plain one from the gathered state
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
        finish_artifact(tmp, out, name=name, parent=parent, template_rec=template_record(template, tok), cfg=cfg,
                        recipe=recipe, data=data or [], history=result.history,
                        metrics={k: v for k, v in summary.items() if k != "data"} | {"data_report": data_report})
        shutil.rmtree(work, ignore_errors=True)
