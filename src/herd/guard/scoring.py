"""Scores from the guard's first answer tokens, in one forward pass per conversation.

Dossier §6.2 / §10.4: the score for AUPRC is the probability that the FIRST generated token is
"unsafe". The verdict is rendered ``" safe"`` / ``" unsafe\\n…"`` after ``[/INST]``; in SmolLM2's
tokenizer both words are single tokens and differ (checked at run time: :func:`verdict_token_ids`).

Per-category score ("codes"): the probability that the answer STARTS with ``" unsafe\\n{code}"``,
read by teacher-forcing ``" unsafe\\n" + prefix`` after the prompt in the same forward pass:
P(unsafe) · P(tokens up to the code) · P(code token). For a record violating several categories it
ranks the first-listed code (codes are listed sorted); the paper's one-vs-all alternative (a prompt
holding only that category, scored by P(unsafe)) is ``per_category="one_vs_all"`` in
:meth:`herd.guard.classifier.Guard.scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from herd.core.errors import HerdError
from herd.core.progress import Progress
from herd.engine.kv import after_prefix, common_prefix_len, prefix_cache


def verdict_token_ids(tokenizer) -> tuple[int, int]:
    """First token ids of ``" safe"`` and ``" unsafe"``; they must differ or P(unsafe) is undefined."""
    safe = tokenizer(" safe", add_special_tokens=False)["input_ids"]
    unsafe = tokenizer(" unsafe", add_special_tokens=False)["input_ids"]
    if not safe or not unsafe or safe[0] == unsafe[0]:
        raise HerdError("this tokenizer starts ' safe' and ' unsafe' with the same token: the first-token "
                        "P(unsafe) score of Llama Guard cannot be read from it")
    return safe[0], unsafe[0]


@dataclass(frozen=True)
class CodeScoring:
    """How to read per-code probabilities: teacher-forced ``prefix`` ids, then one id per code."""

    prefix: list[int]  # the tokens of " unsafe\n" + code prefix (shared by every code)
    code_ids: list[int]  # the distinguishing token of each code, in code order


def code_scoring(tokenizer, codes: list[str]) -> CodeScoring:
    """Find the shared prefix of ``" unsafe\\n" + code`` and the one token that tells the codes apart."""
    seqs = [tokenizer(" unsafe\n" + c, add_special_tokens=False)["input_ids"] for c in codes]
    n = 0
    while all(len(s) > n for s in seqs) and len({s[n] for s in seqs}) == 1:
        n += 1
    ids = [s[n] if len(s) > n else None for s in seqs]
    if len(codes) > 1 and (None in ids or len(set(ids)) != len(ids) or any(len(s) != n + 1 for s in seqs)):
        raise HerdError(f"category codes {codes} do not differ in exactly one token; score categories "
                        "one-vs-all instead (per_category: one_vs_all)")
    if len(codes) == 1:
        n = len(seqs[0]) - 1
        ids = [seqs[0][-1]]
    if not n or seqs[0][0] != verdict_token_ids(tokenizer)[1]:
        raise HerdError("' unsafe' followed by a newline does not start with the ' unsafe' token in this "
                        "tokenizer; score categories one-vs-all instead (per_category: one_vs_all)")
    return CodeScoring(prefix=seqs[0][:n], code_ids=ids)


MIN_SHARED_PREFIX = 32  # tokens: below this, prompts are scored whole


def _common_prefix(seqs: list[list[int]], limit: int) -> int:
    """Leading tokens every sequence shares, at most ``limit`` (so the answer position stays in the suffix)."""
    return min(common_prefix_len(seqs), limit)


def _precision_ctx(model):
    from herd.engine.training import resolve_precision

    dtype = resolve_precision("auto")
    dev = next(model.parameters()).device
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None), dev


@torch.no_grad()
def score_prompts(model, tokenizer, prompts: list[str], *, codes: CodeScoring | list[CodeScoring | None] | None = None,
                  batch_tokens: int = 8192, progress: bool = False, desc: str = "guard"
                  ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """P(safe), P(unsafe) of the first answer token for each prompt (text ending ``[/INST]``), and with
    ``codes`` the per-code probabilities P(answer starts " unsafe\\n" + code).

    Rows are right-padded (positions stay exact) and batched by length; the LM head runs only on the
    positions whose next-token distribution is read. The prompts' common prefix (the taxonomy) runs once
    and its keys/values are reused by every batch: the same numbers, ~5x less compute for a guard eval. ``progress`` reports prompts scored under ``desc``."""
    safe_id, unsafe_id = verdict_token_ids(tokenizer)
    per = codes if isinstance(codes, list) else [codes] * len(prompts)
    seqs, starts = [], []
    for p, cs in zip(prompts, per):
        ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        starts.append(len(ids) - 1)
        seqs.append(ids + (cs.prefix if cs else []))
    p_safe, p_unsafe = np.zeros(len(prompts)), np.zeros(len(prompts))
    p_codes: list[np.ndarray | None] = [None] * len(prompts)
    model.eval()
    amp, dev = _precision_ctx(model)
    lm = getattr(model, "model", model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # the taxonomy text every prompt starts with runs once; each batch reuses its keys and values
    p = _common_prefix(seqs, min(starts, default=0)) if len(seqs) > 1 else 0
    prefix = None
    if p >= MIN_SHARED_PREFIX:
        with amp:
            prefix = prefix_cache(lm, seqs[0][:p])
    else:
        p = 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    bar = Progress(total=len(order), desc=desc, unit="record", enabled=progress)
    i = 0
    while i < len(order):
        width = len(seqs[order[i]]) - p
        n = max(1, batch_tokens // max(1, width))
        if p:  # the repeated prefix keys/values count against the batch too
            n = max(1, min(n, 2 * batch_tokens // p))
        idx = order[i:i + n]
        i += n
        with amp:
            hidden = lm(**after_prefix([seqs[j] for j in idx], p, prefix, pad, dev)).last_hidden_state
        for r, j in enumerate(idx):
            pos = list(range(starts[j] - p, len(seqs[j]) - p))  # first answer token, then each teacher-forced one
            logp = torch.log_softmax(model.lm_head(hidden[r, pos]).float(), dim=-1)
            p_safe[j], p_unsafe[j] = float(logp[0, safe_id].exp()), float(logp[0, unsafe_id].exp())
            cs = per[j]
            if cs:
                forced = logp[0, unsafe_id] + sum(logp[k + 1, t] for k, t in enumerate(cs.prefix[1:]))
                p_codes[j] = (forced + logp[-1, cs.code_ids]).exp().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return p_safe, p_unsafe, p_codes
