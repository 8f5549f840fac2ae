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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from herd.align.common import load_encoded_pairs
from herd.align.config import RewardModelStage
from herd.artifacts import staging_dir, template_record
from herd.base import BaseRef, load_tokenizer
from herd.core.errors import HerdError
from herd.core.registry import STAGES
from herd.engine.distributed import map_rows
from herd.engine.logprobs import Encoded, encode_reply, map_batches, pad_right
from herd.engine.losses import bradley_terry_loss, rating_margin
from herd.engine.pair_loop import pair_loop_config, train_items
from herd.engine.training import device, dist_env, full_state_dict
from herd.stages import StageContext
from herd.stages.common import finish_artifact
from herd.templates import Template, get_template


def reward_pad_id(tokenizer) -> int:
    """A padding id the template never emits: the tokenizer's pad if it is neither BOS nor EOS, else its
    unk token, else EOS (then HF's own pooling would differ from herd's on replies ending with EOS)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    for cand in (tokenizer.pad_token_id, tokenizer.unk_token_id):
        if cand is not None and cand not in special:
            return int(cand)
    return int(tokenizer.eos_token_id)


def pooled_rewards(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head at each row's last attended token (right padding), float32, shape [batch]."""
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(pooled).squeeze(-1).float()


def score_encoded(model: nn.Module, seqs: list[Encoded], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Rewards of already-encoded sequences (CPU float32, input order); under torchrun the ranks share
    the batches (every rank gets all rewards)."""
    return map_rows(lambda part: map_batches(model, part, pad_id, batch_size,
                                             lambda m, ids, att, _lab: pooled_rewards(m, ids, att)),
                    seqs, batch_size, key=len)


@dataclass
class RewardModel:
    """A loaded reward-model artifact: score (prompt, reply) pairs in the template it was trained with."""

    model: nn.Module
    tokenizer: object
    template: Template
    pad_id: int
    path: Path | None = None

    def score(self, prompts: list[list[dict]], replies: list[str], batch_size: int = 8) -> torch.Tensor:
        seqs = [encode_reply(self.template, self.tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
        return score_encoded(self.model, seqs, self.pad_id, batch_size)


def load_reward_model(path: str | Path, template: Template | None = None) -> RewardModel:
    """A reward artifact via ``AutoModelForSequenceClassification``, scoring in the template it was
    trained with (named in its lineage); ``template`` is the fallback for folders without one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise HerdError(f"{path}: not a reward model folder (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    if "LlamaForSequenceClassification" not in (cfg.get("architectures") or []):
        raise HerdError(f"{path}: not a reward model (architectures {cfg.get('architectures')}); "
                        "train one with a reward_model stage")
    lin = path / "lineage.json"
    tname = (json.loads(lin.read_text()).get("template") or {}).get("name") if lin.is_file() else None
    if tname:
        template = get_template(tname)
    if template is None:
        raise HerdError(f"{path}: no template recorded in lineage.json; pass the template")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).to(device())
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else reward_pad_id(tok)
    return RewardModel(model, tok, template, int(pad), path)


def pair_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, ratings: list[str | None] | None = None
                 ) -> dict:
    """Pairwise accuracy (chosen scored higher; ties count as wrong), mean margin, per-rating accuracy."""
    if r_chosen.numel() == 0:
        return {"pairs": 0}
    right = (r_chosen > r_rejected).float()
    out = {"pairs": int(r_chosen.numel()), "accuracy": round(float(right.mean()), 4),
           "margin_mean": round(float((r_chosen - r_rejected).mean()), 4),
           "chosen_mean": round(float(r_chosen.mean()), 4), "rejected_mean": round(float(r_rejected.mean()), 4)}
    if ratings and any(r is not None for r in ratings):
        by: dict[str, list[float]] = {}
        for r, ok in zip(ratings, right.tolist()):
            by.setdefault(r or "unrated", []).append(ok)
        out["accuracy_by_rating"] = {k: round(sum(v) / len(v), 4) for k, v in by.items()}
    return out


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
        seqs = [train.chosen[i] for i in idx] + [train.rejected[i] for i in idx]
        ids, att, _ = pad_right(seqs, pad)
        rewards = pooled_rewards(model, ids.to(dev), att.to(dev))
        rc, rr = rewards.chunk(2)
        losses = bradley_terry_loss(rc, rr, margins[idx].to(dev))
        return losses.sum(), {"accuracy": float((rc > rr).sum()), "margin": float((rc - rr).detach().sum())}

    def held_out() -> tuple[dict, torch.Tensor, torch.Tensor]:
        if not held.pairs:
            return {"pairs": 0}, torch.zeros(0), torch.zeros(0)
        rc = score_encoded(model, held.chosen, pad, cfg.eval_batch)
        rr = score_encoded(model, held.rejected, pad, cfg.eval_batch)
        return pair_metrics(rc, rr, [p.rating for p in held.pairs]), rc, rr

    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    before, _, _ = held_out()
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
        for p, c, r in zip(held.pairs, rc.tolist(), rr.tolist()):
            f.write(json.dumps({"source": p.source, "index": p.index, "chosen": c, "rejected": r}) + "\n")
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
