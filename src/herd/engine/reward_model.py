"""Reward models at run time: load a ``reward_model`` artifact and score (prompt, reply) pairs with it.

A reward is the scalar head's output at the LAST REAL token of ``template(prompt + [reply])``, pooled by
the attention mask (robust when pad = EOS, as in SmolLM2's tokenizer). Used by the reward-model stage's
evaluation, rejection sampling, PPO and the reward-judged win rate.

Replies to the same prompt (rejection sampling's K samples, a pair's chosen and rejected) are scored off
one pass of their shared prompt: its keys and values are computed once and every reply reads them
(:mod:`herd.engine.kv`), so the prompt's tokens are not recomputed K times. Causal attention makes
that the same number as scoring each sequence whole (tested to float rounding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from herd.core.errors import HerdError
from herd.core.progress import Progress
from herd.engine.distributed import map_chunks, map_rows
from herd.engine.kv import PREFIX_MIN, after_prefix, common_prefix_len, prefix_cache
from herd.engine.logprobs import Encoded, encode_reply, map_batches
from herd.engine.training import device, dist_env
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


def prompt_groups(seqs: list[Encoded]) -> tuple[list[list[int]], list[int]]:
    """(groups, singles): indices of sequences whose tokens before the reply are alike, for groups of two
    or more whose shared prefix is worth a pass of its own; every other index is a single."""
    by: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(seqs):
        by.setdefault(tuple(s.input_ids[:s.reply_start]), []).append(i)
    groups, singles = [], []
    for key, idx in by.items():
        (groups if len(idx) > 1 and len(key) >= PREFIX_MIN else singles).append(idx)
    return groups, [i for part in singles for i in part]


def group_prefix_len(rows: list[list[int]]) -> int:
    """Tokens a group's prefix pass computes: what every row starts with, up to each one's second-last
    token (so every pooled token is in a suffix)."""
    return min(common_prefix_len(rows), min(len(r) for r in rows) - 1)


def prompt_rewards(model: nn.Module, rows: list[list[int]], pad_id: int, *, checkpoint: bool = False) -> torch.Tensor:
    """Rewards, with their graph, of ``rows`` that are replies to ONE prompt (a training pair's chosen and
    rejected): the shared prefix (:func:`group_prefix_len`) runs once and each reply's suffix reads its keys
    and values, which carry the gradient back into the prefix pass, so the loss and the gradients are those
    of scoring every row whole (tested) for the prompt computed once. Rows with a shorter common start than
    ``PREFIX_MIN`` run whole. ``checkpoint``: the layers recomputed in the backward
    (:func:`herd.engine.shared_prefix.rows_after_prompt`)."""
    from herd.engine.shared_prefix import rows_after_prompt

    hidden, shared = rows_after_prompt(model.model, rows, group_prefix_len(rows), pad_id, checkpoint=checkpoint)
    last = torch.tensor([len(r) - shared - 1 for r in rows], device=hidden.device)
    return model.score(hidden[torch.arange(len(rows), device=hidden.device), last]).squeeze(-1).float()


@torch.no_grad()
def score_group(model: nn.Module, seqs: list[Encoded], pad_id: int, batch_size: int = 8) -> list[float]:
    """Rewards of sequences that share a prompt: the shared prefix (:func:`group_prefix_len`) runs once;
    the suffixes run in batches that read its cache."""
    rows = [s.input_ids for s in seqs]
    shared = group_prefix_len(rows)
    dev = next(model.parameters()).device
    prefix = prefix_cache(model.model, rows[0][:shared])
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        hidden = model.model(**after_prefix(part, shared, prefix, pad_id, dev)).last_hidden_state
        last = torch.tensor([len(r) - shared - 1 for r in part], device=hidden.device)
        out += model.score(hidden[torch.arange(len(part), device=hidden.device), last]).squeeze(-1).float().tolist()
    return out


def score_shared(model: nn.Module, seqs: list[Encoded], pad_id: int, batch_size: int = 8,
                 desc: str | None = None) -> torch.Tensor:
    """Rewards of encoded sequences (CPU float32, input order); replies to the same prompt are scored off
    one pass of it (:func:`score_group`), the rest as :func:`score_encoded` does. Under torchrun the ranks
    share the groups and the batches. ``desc``: report progress (replies scored) under that name."""
    groups, singles = prompt_groups(seqs)
    out = torch.zeros(len(seqs), dtype=torch.float32)
    bar = Progress(total=len(seqs), desc=desc or "", unit="reply", enabled=desc is not None and dist_env()[0] == 0)

    def one(group: list[int]) -> list[float]:
        rewards = score_group(model, [seqs[i] for i in group], pad_id, batch_size)
        bar.update(len(group) * dist_env()[1])  # the ranks score alike: rank 0's count stands for all
        return rewards

    with bar:
        if singles:
            out[singles] = score_encoded(model, [seqs[i] for i in singles], pad_id, batch_size)
            bar.update(len(singles))
        if groups:
            was_training = model.training
            model.eval()
            try:
                flat = map_chunks(lambda part, _c: [r for g in part for r in one(g)], groups, 1)
            finally:
                model.train(was_training)
            out[[i for g in groups for i in g]] = torch.tensor(flat, dtype=torch.float32)
    return out


@dataclass
class RewardModel:
    """A loaded reward-model artifact: score (prompt, reply) pairs in the template it was trained with."""

    model: nn.Module
    tokenizer: object
    template: Template
    pad_id: int
    path: Path | None = None

    def score(self, prompts: list[list[dict]], replies: list[str], batch_size: int = 8,
              desc: str | None = None) -> torch.Tensor:
        seqs = [encode_reply(self.template, self.tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
        return score_shared(self.model, seqs, self.pad_id, batch_size, desc)


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
