"""Multiple-choice scoring without generation: Meditron's prompts, HELM top-token and log-likelihood.

Prompts follow epfLLM/meditron ``evaluation/benchmarks.py`` and ``inference.py`` (recipes.md §4.4):
few-shot demos ``{prompt}\\nThe answer is: {gold}`` joined by blank lines go before the item, and the
whole is wrapped as ``{instruction}\\n{demos}\\n\\n{prompt}\\nThe answer is:``. An MCQ prompt is
``Question: {q}\\n\\nOptions:\\nA. …\\nB. …`` ("?" appended when the question ends in neither "?" nor
"."); PubMedQA (``ClosedPubMedQA``) is the abstract's contexts joined by newlines, then the question.
Upstream keeps a trailing newline on zero-shot prompts; here the prompt always ends at "The answer
is:" and every option is scored as the continuation ``" " + label``, exactly as the demos answer.

Scoring modes (both from one forward pass over the prompt when every option is a single token):

- ``top_token`` (HELM, Meditron's "top-token"): the option whose first token has the highest
  next-token log-probability wins. ``top1_in_options`` records whether the unrestricted argmax over
  the whole vocabulary was an option at all (HELM's strict reading counts the rest as wrong).
- ``loglik`` (lm-evaluation-harness): the option whose whole continuation has the highest summed
  log-probability wins. Continuation tokens are ``tok(prompt + cont)[len(tok(prompt)):]`` as in the
  harness, so SentencePiece tokenizers that merge the space into the next token score correctly.
  For single-token labels (SmolLM2's " A", " yes", " maybe") it equals ``top_token``; it differs for
  multi-token labels or with ``target="text"`` (the option's text after its letter).

Rows are right-padded: with causal attention the real positions never see the padding and keep their
default position ids, so an item scores the same alone and inside a padded batch. Only the positions
that are scored go through the LM head (the full ``batch × length × vocab`` logits are never built).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

ANSWER_PREFIX = "The answer is:"


@dataclass
class MCQItem:
    id: str
    prompt: str  # the item's body: "Question: …\n\nOptions:\nA. …" or PubMedQA's contexts + question
    labels: list[str]  # what the model answers: ["A", "B", "C", "D"] or ["yes", "no", "maybe"]
    answer: str  # the gold label
    texts: list[str] = field(default_factory=list)  # option texts (for target="text")
    meta: dict = field(default_factory=dict)


def format_mcq(question: str, options: Sequence[str]) -> str:
    """Meditron's ``format_mcq``: ``Question: …\\n\\nOptions:\\nA. …``."""
    if not question.endswith("?") and not question.endswith("."):
        question += "?"
    opts = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
    return f"Question: {question}\n\nOptions:\n{opts}"


def build_prompt(instruction: str, item: MCQItem, demos: Sequence[MCQItem] = (), target: str = "label") -> str:
    """``{instruction}\\n{demo}\\nThe answer is: {gold}\\n\\n…{item}\\nThe answer is:``.

    Demos answer in the form the item's options are scored in (``target``): the gold label (upstream),
    or label and text ("C. gamma") for ``target="text"``.
    """
    shots = "".join(f"{d.prompt}\n{ANSWER_PREFIX}{continuations(d, target)[d.labels.index(d.answer)]}\n\n"
                    for d in demos)
    return f"{instruction}\n{shots}{item.prompt}\n{ANSWER_PREFIX}"


def pick_demos(pool: Sequence[MCQItem], shots: int, seed: int, exclude: str | None = None) -> list[MCQItem]:
    """``shots`` demos drawn once per seed from ``pool`` (the same for every item, as upstream), skipping
    ``exclude`` (the item itself when demos come from the test file)."""
    if shots <= 0:
        return []
    order = sorted(range(len(pool)), key=lambda i: pool[i].id)
    random.Random(seed).shuffle(order)
    cands = [pool[i] for i in order[: shots + 1]]
    return [d for d in cands if d.id != exclude][:shots]


def continuations(item: MCQItem, target: str = "label") -> list[str]:
    """What each option's score is computed on: ``" A"`` (label) or ``" A. text"`` (text)."""
    if target == "text" and item.texts:
        return [f" {lab}. {txt}" for lab, txt in zip(item.labels, item.texts)]
    return [f" {lab}" for lab in item.labels]


@dataclass
class Encoded:
    context: list[int]
    conts: list[list[int]]
    truncated: bool


def encode(tokenizer, prompt: str, conts: Sequence[str], max_len: int) -> Encoded:
    """Token ids of the prompt and of each continuation (harness-style split), left-truncated to fit."""
    ctx = list(tokenizer(prompt)["input_ids"])
    out = []
    for c in conts:
        whole = list(tokenizer(prompt + c)["input_ids"])
        if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
            out.append(whole[len(ctx):])
        else:  # the boundary merged: fall back to the continuation on its own
            out.append(list(tokenizer(c, add_special_tokens=False)["input_ids"]))
    longest = max(len(c) for c in out)
    keep = max(1, max_len - longest)
    truncated = len(ctx) > keep
    return Encoded(ctx[-keep:] if truncated else ctx, out, truncated)


@dataclass
class ItemScore:
    scores: list[float]  # per option: first-token log-prob (top_token) or summed log-prob (loglik)
    pred: int  # index of the chosen option
    top1_token: str  # the unrestricted argmax next token after the prompt
    top1_in_options: bool
    prompt_tokens: int
    truncated: bool


def _rows(enc: Encoded, mode: str) -> list[list[int]]:
    """The sequences to run for one item: the context alone when only each option's first token is
    scored (every option from one pass), else context + continuation per option."""
    if mode == "top_token" or all(len(c) == 1 for c in enc.conts):
        return [enc.context]
    return [enc.context + c for c in enc.conts]


def score_items(model, tokenizer, prompts: Sequence[str], conts: Sequence[Sequence[str]], *, mode: str = "top_token",
                batch_size: int = 8, max_len: int = 2048, progress: bool = False, desc: str = "mcq"
                ) -> list[ItemScore]:
    """Score each prompt's options; batched, right-padded forward passes sorted by length (``progress``
    reports the rows run: one per item, or one per option in loglik mode). The prefix every row shares
    (instruction and few-shot demos) runs once; each batch reads its keys and values."""
    import torch

    from herd.core.progress import Progress
    from herd.engine.kv import PREFIX_MIN, after_prefix, common_prefix_len, prefix_cache

    if mode not in ("top_token", "loglik"):
        raise ValueError(f"mode must be top_token or loglik, got {mode!r}")
    encs = [encode(tokenizer, p, c, max_len) for p, c in zip(prompts, conts)]
    if mode == "top_token":
        for i, e in enumerate(encs):
            firsts = [c[0] for c in e.conts]
            if len(set(firsts)) != len(firsts):
                raise ValueError(f"item {i}: options share a first token {firsts}; top_token cannot tell them "
                                 "apart, use mode: loglik")
    # flatten into rows; remember which item/option each row scores
    rows: list[list[int]] = []
    owner: list[tuple[int, int | None]] = []  # (item, option or None = context row)
    for i, e in enumerate(encs):
        item_rows = _rows(e, mode)
        for j, ids in enumerate(item_rows):
            rows.append(ids)
            owner.append((i, None if len(item_rows) == 1 else j))
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    device = next(model.parameters()).device
    # the instruction and few-shot demos every prompt starts with run once; each batch reuses them
    shared = min(common_prefix_len(rows), *(len(e.context) - 1 for e in encs)) if len(rows) > 1 else 0
    shared = shared if shared >= PREFIX_MIN else 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    first_lp: dict[int, torch.Tensor] = {}  # item → next-token log-probs after the context (vocab)
    cont_lp: dict[tuple[int, int], float] = {}  # (item, option) → summed log-prob of the continuation
    model.eval()
    with torch.no_grad(), Progress(total=len(order), desc=desc, unit="row", enabled=progress) as bar:
        prefix = prefix_cache(decoder, rows[0][:shared]) if shared else None
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            hidden = decoder(**after_prefix([rows[r] for r in idx], shared, prefix, pad, device)).last_hidden_state
            for k, r in enumerate(idx):
                i, j = owner[r]
                n_ctx = len(encs[i].context) - shared  # positions in this pass start after the prefix
                if j is None:  # logits at the last context position only
                    first_lp[i] = torch.log_softmax(head(hidden[k, n_ctx - 1]).float(), -1).cpu()
                else:
                    cont = encs[i].conts[j]
                    pos = torch.arange(n_ctx - 1, n_ctx - 1 + len(cont), device=hidden.device)
                    lp = torch.log_softmax(head(hidden[k, pos]).float(), -1)
                    cont_lp[(i, j)] = float(lp[torch.arange(len(cont)), torch.tensor(cont, device=lp.device)].sum())
                    if j == 0:
                        first_lp[i] = lp[0].cpu()
            bar.update(len(idx))
    out = []
    for i, e in enumerate(encs):
        lp = first_lp[i]
        if mode == "top_token" or all(len(c) == 1 for c in e.conts):
            scores = [float(lp[c[0]]) for c in e.conts]
        else:
            scores = [cont_lp[(i, j)] for j in range(len(e.conts))]
        top = int(lp.argmax())
        pred = max(range(len(scores)), key=lambda j: (scores[j], -j))
        out.append(ItemScore(scores=scores, pred=pred, top1_token=tokenizer.decode([top]),
                             top1_in_options=top in {c[0] for c in e.conts}, prompt_tokens=len(e.context),
                             truncated=e.truncated))
    return out


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean over items (None without items)."""
    from herd.core.paired import mean_ci

    ci = mean_ci(values, n_boot=n_boot, seed=seed, confidence=confidence)
    return tuple(ci) if ci else None
