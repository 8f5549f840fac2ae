"""The ``reward_model`` stage (Llama 2 §3.2.2, dossier §5.2 step 3) and reward-model scoring.

The model is transformers' ``LlamaForSequenceClassification`` with ``num_labels=1`` loaded from the
parent: the transformer is the parent's, the LM head is replaced by a freshly initialised scalar head.
A reward is the head's output at the LAST REAL token of ``template(prompt + [reply])``. herd pools by the
attention mask (robust when pad = EOS, as in SmolLM2's tokenizer, where HF's pad-id pooling would skip the
reply's final EOS); the artifact's ``pad_token_id`` is set to a token the template never emits, so HF's
own pooling in ``AutoModelForSequenceClassification`` picks the same token and the artifact needs no herd
to score.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from herd.artifacts import staging_dir, template_record
from herd.base import BaseRef, load_tokenizer
from herd.core.registry import STAGES
from herd.engine.logprobs import pad_right
from herd.engine.losses import bradley_terry_loss, rating_margin
from herd.engine.pair_loop import pair_loop_config, train_items
from herd.engine.reward_model import (  # noqa: F401  (re-exported: the stage's scoring helpers)
    RewardModel,
    load_reward_model,
    pair_metrics,
    pooled_rewards,
    prompt_rewards,
    reward_pad_id,
    score_encoded,
    score_shared,
)
from herd.engine.training import device, dist_env, full_state_dict
from herd.stages import StageContext
from herd.stages.common import finish_artifact
from herd.stages.configs import RewardModelStage
from herd.stages.pairs import load_encoded_pairs
from herd.templates import Template


def run_reward_model(cfg: RewardModelStage, parent: BaseRef, template: Template, out: Path, *, name: str,
                     resume: bool = False, recipe: dict | None = None, progress: bool = True,
                     workspace: Path | None = None) -> tuple[Path, dict]:
    """Train a reward model on ``cfg.data`` and write it at ``out``; returns (path, summary)."""
    from transformers import LlamaForSequenceClassification

    rank, world = dist_env()
    tok = load_tokenizer(parent)
    pad = reward_pad_id(tok)
    data, train, held = load_encoded_pairs(cfg, recipe, template, tok, progress and rank == 0)
    margins = torch.tensor([rating_margin(p.rating, cfg.margin, p.margin) for p in train.pairs])
    torch.manual_seed(cfg.seed)  # the new head's initialisation
    model = LlamaForSequenceClassification.from_pretrained(str(parent.path), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad
    model.to(device())

    def loss_fn(idx: list[int]):
        dev = next(model.parameters()).device
        if cfg.shared_prompt:  # each pair's prompt once, both replies off its keys and values
            rc, rr = torch.stack([prompt_rewards(model, [train.chosen[i].input_ids, train.rejected[i].input_ids],
                                                 pad, checkpoint=cfg.gradient_checkpointing) for i in idx]).T
        else:
            seqs = [train.chosen[i] for i in idx] + [train.rejected[i] for i in idx]
            ids, att, _ = pad_right(seqs, pad)
            rc, rr = pooled_rewards(model, ids.to(dev), att.to(dev)).chunk(2)
        losses = bradley_terry_loss(rc, rr, margins[idx].to(dev))
        return losses.sum(), {"accuracy": float((rc > rr).sum()), "margin": float((rc - rr).detach().sum())}

    def held_out() -> tuple[dict, torch.Tensor, torch.Tensor]:
        if not held.pairs:
            return {"pairs": 0}, torch.zeros(0), torch.zeros(0)
        # a pair's two replies share its prompt: scored off one pass of it
        rc, rr = score_shared(model, held.chosen + held.rejected, pad, cfg.eval_batch).split(len(held.pairs))
        return pair_metrics(rc, rr, [p.rating for p in held.pairs]), rc, rr

    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    before, rc0, rr0 = held_out()
    result = train_items(model, len(train), loss_fn, pair_loop_config(cfg, progress), work, resume=resume,
                         desc=cfg.name)
    if world > 1:  # the trained model is wrapped or sharded: score with a plain copy of its weights
        state = full_state_dict(model, all_ranks=True)
        model = LlamaForSequenceClassification.from_pretrained(str(parent.path), num_labels=1, dtype=torch.float32)
        model.load_state_dict(state)
        model.config.pad_token_id = pad
        model.to(device())
    after, rc, rr = held_out()
    hist = result.history
    summary = {"steps": result.steps, "train_pairs": len(train), "seconds": round(result.seconds, 1),
               "first_loss": hist[0]["loss"] if hist else None, "final_loss": hist[-1]["loss"] if hist else None,
               "heldout": after, "heldout_before": before, "margin_scheme": cfg.margin,
               "world_size": world,
               "data": {"read": data.report.as_dict(), "duplicates": data.duplicates,
                        "dropped_train": dict(train.dropped), "dropped_heldout": dict(held.dropped)}}
    if rank != 0:
        return out, summary
    tmp = staging_dir(out)
    model.config.architectures = ["LlamaForSequenceClassification"]
    model.save_pretrained(tmp, safe_serialization=True)
    tok.pad_token = tok.convert_ids_to_tokens(pad)
    tok.chat_template = template.chat_template(tok)
    tok.save_pretrained(tmp)
    with open(tmp / "heldout_rewards.jsonl", "w") as f:
        for p, c, r, c0, r0 in zip(held.pairs, rc.tolist(), rr.tolist(), rc0.tolist(), rr0.tolist()):
            f.write(json.dumps({"source": p.source, "index": p.index, "chosen": c, "rejected": r,
                                "chosen_before": c0, "rejected_before": r0}) + "\n")
    md = (f"Reward model: held-out pairwise accuracy {after.get('accuracy')} on {after.get('pairs')} pairs "
          f"(before training {before.get('accuracy')}).")
    finish_artifact(tmp, out, name=name, parent=parent, template_rec=template_record(template, tok), cfg=cfg,
                    recipe=recipe, data=data.records, metrics=summary, history=hist, extra_md=md)
    shutil.rmtree(work, ignore_errors=True)
    return out, summary


@STAGES.register("reward_model")
def run(cfg: RewardModelStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_reward_model(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                            progress=ctx.progress, workspace=ctx.workspace)

__all__ = ["RewardModel", "load_reward_model", "pair_metrics", "pooled_rewards", "reward_pad_id",
           "run_reward_model", "score_encoded"]
