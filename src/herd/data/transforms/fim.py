"""Fill-in-the-middle, as Code Llama trains and prompts it (shared/reference/recipes.md §3.3).

Training: a document is split at CHARACTER level into prefix/middle/suffix (two split points drawn
independently and uniformly over its length), with probability ``rate`` (0.9), only when the
transformed document (and its separator) fits in what is left of the row it starts in, so that no
FIM document is cut across model contexts (packing would otherwise cut ~40 % of them); half of the transformed documents use PSM and half SPM:

    PSM: <PRE> prefix <SUF> suffix <MID> middle <EOT>
    SPM: <PRE> <SUF> suffix <MID> prefix middle <EOT>      (prefix and middle encoded together)

The loss covers the whole sequence, sentinels included. Inference mirrors codellama's
``infilling_prompt_tokens``: PSM ``[BOS, <PRE>] + enc(prefix) + [<SUF>] + enc(suffix) + [<MID>]``,
SPM ``[BOS, <PRE>, <SUF>] + enc(suffix) + [<MID>] + enc(prefix)``; generation stops at ``<EOT>``.

Code Llama's SentencePiece adds a space to every encoded piece, so it encodes the suffix and middle
with that space suppressed; byte-level BPE tokenizers (SmolLM2, Llama 3) add none, so plain encoding
is already "no space". BOS is added only where the tokenizer adds one itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SENTINELS = ("<PRE>", "<SUF>", "<MID>", "<EOT>")


@dataclass(frozen=True)
class SentinelIds:
    pre: int
    suf: int
    mid: int
    eot: int


def has_sentinels(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(s in vocab for s in SENTINELS)


def sentinel_ids(tokenizer) -> SentinelIds | None:
    """The four sentinel ids, or None when the tokenizer lacks them (a parent before FIM training)."""
    if not has_sentinels(tokenizer):
        return None
    return SentinelIds(*(tokenizer.convert_tokens_to_ids(s) for s in SENTINELS))


def eot_id(tokenizer) -> int | None:
    ids = sentinel_ids(tokenizer)
    return ids.eot if ids else None


def add_sentinels(tokenizer, model) -> SentinelIds:
    """Add the sentinels as single special tokens and resize the embeddings (tied ones stay tied).

    Each new row starts as the mean of the rows of the pieces its text had before (``<MID>`` was
    ``<``, ``M``, ``ID``, ``>``): four distinct rows, each where the parent read that sentinel. transformers'
    ``mean_resizing`` draws them with covariance x 1e-9, i.e. as ONE vector (pairwise distance 1e-4 for
    rows of norm 2.2 on SmolLM2-135M); the model then cannot tell <MID> from <SUF>, nor predict <EOT>
    apart from <PRE>, and a short run at lr 2e-4 moved them only ~0.05 apart. Idempotent."""
    if not has_sentinels(tokenizer):
        tokenizer.add_special_tokens({"additional_special_tokens": list(SENTINELS)},
                                     replace_extra_special_tokens=False)
    n = len(tokenizer)
    if model is not None and model.get_input_embeddings().weight.shape[0] < n:
        import torch

        pieces = {s: tokenizer(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
                  for s in SENTINELS}  # the sentinel's text as ordinary pieces, as the parent reads it
        model.resize_token_embeddings(n, mean_resizing=False)
        inp, outp = model.get_input_embeddings().weight, model.get_output_embeddings()
        mats = [inp] + ([outp.weight] if outp is not None and outp.weight.data_ptr() != inp.data_ptr() else [])
        with torch.no_grad():
            for w in mats:
                for s in SENTINELS:
                    w[tokenizer.convert_tokens_to_ids(s)] = w[pieces[s]].mean(0)
    return sentinel_ids(tokenizer)


def plain_ids(tokenizer, text: str) -> list[int]:
    """``text`` as token ids with no BOS/EOS added: how FIM pieces, prompts and scored middles are encoded."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer adds one by itself (Llama 2), else [] (SmolLM2)."""
    return [i for i in tokenizer("", add_special_tokens=True)["input_ids"] if i == tokenizer.bos_token_id]


def split_document(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Character-level prefix/middle/suffix from two independent uniform points (sorted)."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def fim_ids(tokenizer, ids: SentinelIds, prefix: str, middle: str, suffix: str, mode: str,
            spm_encoding: str = "joint") -> list[int]:
    """One training sequence in PSM or SPM layout (no BOS/EOS: the packer adds the separator).

    SPM encodes prefix and middle together, as published (``spm_encoding="joint"``). With a byte-level
    BPE a split after a newline then falls inside a newline+indent token, so the paper's inference prompt,
    ``enc(prefix)``, ends in a token training never shows there; the infilling eval heals that token
    (:func:`herd.evals.humaneval.healed_prompt`). ``"separate"`` encodes prefix and middle each on its
    own instead, so that training matches the unhealed prompt (measured: it lost SPM middle NLL)."""
    if mode == "psm":
        return ([ids.pre] + plain_ids(tokenizer, prefix) + [ids.suf] + plain_ids(tokenizer, suffix) + [ids.mid]
                + plain_ids(tokenizer, middle) + [ids.eot])
    if mode == "spm":
        body = plain_ids(tokenizer, prefix + middle) if spm_encoding == "joint" \
            else plain_ids(tokenizer, prefix) + plain_ids(tokenizer, middle)
        return [ids.pre, ids.suf] + plain_ids(tokenizer, suffix) + [ids.mid] + body + [ids.eot]
    raise ValueError(f"FIM mode must be 'psm' or 'spm', not {mode!r}")


@dataclass
class FIMStats:
    documents: int = 0
    psm: int = 0
    spm: int = 0
    cut: int = 0  # would have been transformed but did not fit the rest of its row: kept autoregressive

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def document_ids(tokenizer, text: str, *, ids: SentinelIds | None, rate: float, spm_rate: float, room: int,
                 rng: random.Random, stats: FIMStats, spm_encoding: str = "joint") -> list[int]:
    """A document's training tokens: FIM with probability ``rate`` when the FIM form and one separator
    fit in ``room`` (the tokens left in the row the document starts in), else plain.

    The random draws happen for every document in the same order whatever the outcome, so the
    choice for document i depends only on the seed and i (reproducible, resumable)."""
    stats.documents += 1
    do_fim, spm = rng.random() < rate, rng.random() < spm_rate
    pre, mid, suf = split_document(text, rng)
    plain = plain_ids(tokenizer, text)
    if ids is None or not do_fim:
        return plain
    out = fim_ids(tokenizer, ids, pre, mid, suf, "spm" if spm else "psm", spm_encoding)
    if len(out) + 1 > room:  # it would be cut across rows: the paper applies FIM to whole documents only
        stats.cut += 1
        return plain
    if spm:
        stats.spm += 1
    else:
        stats.psm += 1
    return out


def infill_prompt_ids(tokenizer, prefix: str, suffix: str, mode: str, *,
                      prefix_ids: list[int] | None = None) -> list[int]:
    """Code Llama's inference prompt. Without sentinel tokens (a parent) their text is encoded as is.
    ``prefix_ids`` stand for ``enc(prefix)`` (a token-healed prompt drops the prefix's last token)."""
    ids = sentinel_ids(tokenizer)
    head = plain_ids(tokenizer, prefix) if prefix_ids is None else list(prefix_ids)
    if ids is None:
        pre, suf, mid = (plain_ids(tokenizer, s) for s in SENTINELS[:3])
    else:
        pre, suf, mid = [ids.pre], [ids.suf], [ids.mid]
    if mode == "psm":
        return _bos(tokenizer) + pre + head + suf + plain_ids(tokenizer, suffix) + mid
    if mode == "spm":
        return _bos(tokenizer) + pre + suf + plain_ids(tokenizer, suffix) + mid + head
    raise ValueError(f"FIM mode must be 'psm' or 'spm', not {mode!r}")
