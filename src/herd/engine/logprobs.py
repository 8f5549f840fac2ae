"""Sequence log-probabilities of replies given prompts, rendered through the artifact's template.

DPO, rejection sampling and PPO all need ``log π(reply | prompt)``. The prompt and reply are rendered
together by :meth:`herd.templates.Template.render`, whose labels mark exactly the generation-block
tokens (each block tokenized on its own, so no token straddles the prompt/reply boundary); only the
LAST labelled run, the reply itself, is counted: earlier assistant turns of a multi-turn prompt are
context. The reply's template suffix (Llama 2's ``" " + answer + " " + EOS``) is part of what is scored,
as it is what the model is trained to emit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from herd.engine.cross_entropy import linear_logprobs
from herd.templates import IGNORE_INDEX, Template


@dataclass
class Encoded:
    """Token ids of prompt + reply and labels that are the ids on the reply's tokens only."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_reply(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    @property
    def reply_start(self) -> int:
        """The first labelled position (the length when nothing is labelled): the tokens before it are the prompt."""
        return next((k for k, lab in enumerate(self.labels) if lab != IGNORE_INDEX), len(self.labels))


def last_run_only(labels: list[int]) -> list[int]:
    """Keep the last contiguous run of labelled positions (the final reply), mask the rest."""
    out = [IGNORE_INDEX] * len(labels)
    i = len(labels) - 1
    while i >= 0 and labels[i] == IGNORE_INDEX:
        i -= 1
    while i >= 0 and labels[i] != IGNORE_INDEX:
        out[i] = labels[i]
        i -= 1
    return out


def encode_reply(template: Template, tokenizer, prompt: list[dict], reply: str, open_end: bool = False) -> Encoded:
    """Render ``prompt + [assistant reply]``; labels cover the reply's tokens only. ``open_end``: the reply is
    the beginning of one (no end of turn after it)."""
    msg = {"role": "assistant", "content": reply, **({"open": True} if open_end else {})}
    r = template.render([*prompt, msg], tokenizer)
    return Encoded(r.input_ids, last_run_only(r.labels))


def pad_right(seqs: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), right-padded: real tokens keep positions 0..n-1, so a padded
    row computes what it would alone."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        ids[i, :n] = torch.tensor(s.input_ids)
        att[i, :n] = 1
        lab[i, :n] = torch.tensor(s.labels)
    return ids, att, lab


CHUNKED_HEAD = True  # False: full logits through log_softmax, the path before (bench/pair_memory.py's baseline)


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sequence_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Sum of ``log p(token | prefix)`` over labelled tokens, per row (differentiable). The LM head runs
    only on the positions that predict a labelled token, in chunks, as herd's SFT loss does: a DPO pair of
    two 1,024-token replies would otherwise hold ~1 GB of fp32 logits and their gradients."""
    lm = _causal_lm(model)
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return _labelled_logps(lm, hidden, labels)


def prompt_logps(model: nn.Module, seqs: list[Encoded], pad_id: int, *, checkpoint: bool = False) -> torch.Tensor:
    """:func:`sequence_logps` of ``seqs`` that are replies to ONE prompt (a DPO pair's chosen and rejected),
    with the prompt computed once: its keys and values serve every reply's pass and carry the gradient
    back into the prompt's, so the values and gradients are those of each sequence whole (tested). The
    shared part ends before the first position that predicts a labelled token; a common start shorter
    than ``PREFIX_MIN`` runs whole. ``checkpoint``: the layers recomputed in the backward
    (:func:`herd.engine.shared_prefix.rows_after_prompt`)."""
    from herd.engine.kv import common_prefix_len
    from herd.engine.shared_prefix import rows_after_prompt

    lm = _causal_lm(model)
    rows = [s.input_ids for s in seqs]
    upto = min(common_prefix_len(rows), min(s.reply_start for s in seqs) - 1)
    hidden, shared = rows_after_prompt(lm.model, rows, upto, pad_id, checkpoint=checkpoint)
    labels = torch.full(hidden.shape[:2], IGNORE_INDEX, dtype=torch.long)
    for r, s in enumerate(seqs):
        labels[r, : len(s) - shared] = torch.tensor(s.labels[shared:])
    return _labelled_logps(lm, hidden, labels.to(hidden.device))


def _labelled_logps(lm: nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probs of the labelled tokens that ``hidden`` (positions aligned with
    ``labels``) predicts."""
    target = labels[:, 1:]
    sel = target != IGNORE_INDEX
    if CHUNKED_HEAD and type(lm.lm_head) is nn.Linear and lm.lm_head.bias is None:  # no [n, vocab] logits
        tok_logps = linear_logprobs(hidden[:, :-1][sel], lm.lm_head.weight, target[sel])
    else:
        logits = lm.lm_head(hidden[:, :-1][sel]).float()
        tok_logps = torch.log_softmax(logits, dim=-1).gather(1, target[sel].unsqueeze(1)).squeeze(1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(target)[sel]
    return torch.zeros(labels.shape[0], dtype=tok_logps.dtype, device=tok_logps.device).index_add(0, rows, tok_logps)


@torch.no_grad()
def map_batches(model: nn.Module, seqs: list[Encoded], pad_id: int, batch_size: int, fn,
                device: torch.device | None = None) -> torch.Tensor:
    """``fn(model, ids, attention_mask, labels) -> [batch]`` over length-sorted right-padded batches, in
    eval mode; a CPU float32 vector in input order (little padding wasted, order kept)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.zeros(len(seqs), dtype=torch.float32)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    try:
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, att, lab = pad_right([seqs[j] for j in idx], pad_id)
            out[idx] = fn(model, ids.to(device), att.to(device), lab.to(device)).float().cpu()
    finally:
        model.train(was_training)
    return out


def batched_logps(model: nn.Module, seqs: list[Encoded], pad_id: int, batch_size: int = 8,
                  device: torch.device | None = None) -> torch.Tensor:
    """:func:`sequence_logps` of many encoded sequences (CPU float32, input order)."""
    return map_batches(model, seqs, pad_id, batch_size, sequence_logps, device)


def reply_logps(model: nn.Module, tokenizer, template: Template, prompts: list[list[dict]], replies: list[str],
                batch_size: int = 8) -> torch.Tensor:
    """``log π(reply | prompt)`` for each (prompt, reply), rendered through ``template``."""
    seqs = [encode_reply(template, tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
    return batched_logps(model, seqs, tokenizer.pad_token_id, batch_size)
