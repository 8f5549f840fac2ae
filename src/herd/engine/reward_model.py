"""Reward models at run time: load a ``reward_model`` artifact and score (prompt, reply) pairs with it.

A reward is the scalar head's output at the LAST REAL token of ``template(prompt + [reply])``, pooled by
the attention mask (robust when pad = EOS, as in SmolLM2's tokenizer). Used by the reward-model stage's
evaluation, rejection sampling, PPO and the reward-judged win rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from herd.core.errors import HerdError
from herd.engine.distributed import map_rows
from herd.engine.logprobs import Encoded, encode_reply, map_batches
from herd.engine.training import device
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


def check_reward_model(path: str | Path) -> Path:
    """``path`` if it holds a reward model (a config naming ``LlamaForSequenceClassification``); checked
    before a stage spends minutes sampling, since the model itself loads only when it scores."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise HerdError(f"{path}: not a reward model folder (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    if "LlamaForSequenceClassification" not in (cfg.get("architectures") or []):
        raise HerdError(f"{path}: not a reward model (architectures {cfg.get('architectures')}); "
                        "train one with a reward_model stage")
    return path


def load_reward_model(path: str | Path, template: Template | None = None) -> RewardModel:
    """A reward artifact via ``AutoModelForSequenceClassification``, scoring in the template it was
    trained with (named in its lineage); ``template`` is the fallback for folders without one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = check_reward_model(path)
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
