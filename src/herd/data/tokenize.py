"""Rendering examples to token ids + labels through a template, with an honest drop report.

Fast at scale, exact by construction:
- **batched**: every record is rendered to its text pieces first (prompt pieces and trained pieces, split
  at the generation-block boundaries exactly as :meth:`Template.render` splits them), then the pieces of
  many records go through ONE tokenizer call (``tokenizer(pieces, add_special_tokens=False)``; a fast
  tokenizer encodes a list with the same backend call it uses for one string, piece by piece, so the ids
  are the per-record path's). ``batched=False`` keeps the per-record path as the reference.
- **compact**: a :class:`Tokenized` holds int32 numpy arrays (views into one array per call): ~10 bytes per
  token held, record objects included, where Python int lists held ~40 (bench/data_scale.py). A view keeps
  the whole call's array alive: copy the few items you keep out of a large result you drop.
- **cached**: results are stored under ``<cache>/tokenized/<key>.npz``, the key a hash of everything
  that decides them (records, template, tokenizer, ``max_len``, this module's code); a re-run or a resume
  loads them instead of tokenizing. ``HERD_NO_CACHE=1`` turns it off; an unreadable file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from herd.data.records import Example
from herd.templates import IGNORE_INDEX, Template, TemplateError

BATCH_PIECES = 2048  # text pieces per tokenizer call: big enough to amortise the call, small enough to stream
CACHE_VERSION = 1  # bump when the cache file layout or what goes into the key changes


def _ids(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.int32)
    if a.ndim != 1:
        raise ValueError(f"token ids must be one-dimensional, got shape {a.shape}")
    return a


@dataclass(eq=False, slots=True)
class Tokenized:
    """One record: ``input_ids`` and ``labels`` (the id where trained, ``IGNORE_INDEX`` elsewhere) as int32
    numpy arrays of the same length; lists are converted. Use ``len(x)``, indexing and slicing as with
    lists, but note that ``+`` adds element-wise: concatenate with ``np.concatenate``."""

    input_ids: np.ndarray
    labels: np.ndarray
    source: str
    index: int

    def __post_init__(self) -> None:
        self.input_ids = _ids(self.input_ids)
        self.labels = _ids(self.labels)
        if len(self.labels) != len(self.input_ids):
            raise ValueError(f"{len(self.input_ids)} ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Tokenized):
            return NotImplemented
        return (self.source == other.source and self.index == other.index
                and np.array_equal(self.input_ids, other.input_ids) and np.array_equal(self.labels, other.labels))

    @property
    def n_trained(self) -> int:
        """Tokens with a label (trained)."""
        return int(np.count_nonzero(self.labels != IGNORE_INDEX))

    @property
    def n_targets(self) -> int:
        """Tokens that are a next-token target once labels are shifted (``labels[1:]``): what a batch trains."""
        return int(np.count_nonzero(self.labels[1:] != IGNORE_INDEX))


@dataclass
class TokenizeReport:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0
    trained_tokens: int = 0
    examples_dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.kept} records kept ({self.tokens} tokens, {self.trained_tokens} trained)"]
        for reason, n in sorted(self.dropped.items()):
            parts.append(f"{n} dropped: {reason}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), "tokens": self.tokens,
                "trained_tokens": self.trained_tokens}


def tokenize_examples(examples: list[Example], template: Template, tokenizer, max_len: int, *,
                      batched: bool = True, cache: bool | None = None) -> tuple[list[Tokenized], TokenizeReport]:
    """Render every example. Over-length records are dropped (not cut: a cut target teaches the model
    to stop mid-answer) and counted; so are records with nothing to train on.

    ``batched=False`` renders and tokenizes record by record through :meth:`Template.render` (the
    reference; same output). ``cache``: None uses the tokenized-data cache unless ``HERD_NO_CACHE`` is
    set, False never reads or writes it, True uses it regardless of the environment."""
    from herd.core.phases import record

    with record("tokenize"):
        use_cache = cache if cache is not None else not _env_flag("HERD_NO_CACHE")
        path = None
        if use_cache:
            try:
                key = cache_key(examples, template, tokenizer, max_len)
                path = tokenized_cache_dir() / f"{key}.npz" if key is not None else None
            except OSError as e:  # no cache folder (read-only home): tokenize without it
                print(f"[data] tokenized cache unavailable ({e}); continuing without it", file=sys.stderr)
            if path is not None and (hit := _load(path, path.stem)) is not None:
                return hit
        flat = None  # (all ids, all labels) when the items are views of them
        if batched:
            out, rep, flat = _tokenize_batched(examples, template, tokenizer, max_len)
        else:
            out, rep = _tokenize_one_by_one(examples, template, tokenizer, max_len)
        if path is not None:
            _store(path, path.stem, out, rep, flat)
    return out, rep


def _drop(rep: TokenizeReport, reason: str, ex: Example, *, listed: bool = True) -> None:
    rep.dropped[reason] += 1
    if listed:
        rep.examples_dropped.append(f"{ex.source} record {ex.index}")


def _too_long(max_len: int) -> str:
    return f"longer than max_len {max_len} tokens"


def _tokenize_one_by_one(examples: list[Example], template: Template, tokenizer, max_len: int
                         ) -> tuple[list[Tokenized], TokenizeReport]:
    """The reference path: one :meth:`Template.render` (one tokenizer call per text piece) per record."""
    out, rep = [], TokenizeReport()
    for ex in examples:
        try:
            r = template.render(ex.messages, tokenizer)
        except TemplateError as e:
            _drop(rep, f"template refused it ({e})", ex)
            continue
        if len(r.input_ids) > max_len:
            _drop(rep, _too_long(max_len), ex)
            continue
        n_tr = sum(1 for x in r.labels if x != IGNORE_INDEX)
        if n_tr == 0:
            _drop(rep, "no trained tokens", ex, listed=False)
            continue
        out.append(Tokenized(r.input_ids, r.labels, ex.source, ex.index))
        rep.kept += 1
        rep.tokens += len(r.input_ids)
        rep.trained_tokens += n_tr
    return out, rep


def _pieces(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """(piece, trained) in order: the split :meth:`Template.render` tokenizes piece by piece."""
    out = []
    pos = 0
    for start, end in spans + [(len(text), len(text))]:
        for piece, trained in ((text[pos:start], False), (text[start:end], True)):
            if piece:
                out.append((piece, trained))
        pos = end
    return out


def _tokenize_batched(examples: list[Example], template: Template, tokenizer, max_len: int
                      ) -> tuple[list[Tokenized], TokenizeReport, tuple[np.ndarray, np.ndarray]]:
    """Render chunks of records to pieces, tokenize each chunk's pieces in one call, reassemble in order.

    The tokenizer call of one chunk runs on a worker thread (a fast tokenizer releases the GIL) while this
    thread renders the next chunk and assembles the previous one; only that thread calls the tokenizer."""
    from concurrent.futures import ThreadPoolExecutor

    render = template.text_renderer(tokenizer)
    rep = TokenizeReport()
    ids_parts: list[np.ndarray] = []
    lab_parts: list[np.ndarray] = []
    kept: list[tuple[int, str, int]] = []  # (length, source, index) of every kept record, in order

    def encode(texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]

    def assemble(chunk: list[tuple[Example, list[tuple[str, bool]] | TemplateError]], enc: list[list[int]]
                 ) -> None:
        """Drop or keep each record of a chunk, in order, exactly as the per-record path decides."""
        lengths = [len(e) for e in enc]
        keep: list[bool] = []  # per piece
        trained: list[bool] = []  # per kept piece
        j = 0  # the record's first piece
        for ex, ps in chunk:
            if isinstance(ps, TemplateError):
                _drop(rep, f"template refused it ({ps})", ex)
                continue
            lens = lengths[j:j + len(ps)]
            n = sum(lens)
            n_tr = sum(n_i for n_i, (_, t) in zip(lens, ps) if t)
            j += len(ps)
            if n > max_len:
                _drop(rep, _too_long(max_len), ex)
            elif n_tr == 0:
                _drop(rep, "no trained tokens", ex, listed=False)
            else:
                keep += [True] * len(ps)
                trained += [t for _, t in ps]
                kept.append((n, ex.source, ex.index))
                rep.kept += 1
                rep.tokens += n
                rep.trained_tokens += n_tr
                continue
            keep += [False] * len(ps)
        ids = np.fromiter(chain.from_iterable(e for e, k in zip(enc, keep) if k), dtype=np.int32,
                          count=sum(n for n, k in zip(lengths, keep) if k))
        kept_lengths = [n for n, k in zip(lengths, keep) if k]
        mask = np.repeat(np.array(trained, dtype=bool), np.array(kept_lengths, dtype=np.int64))
        ids_parts.append(ids)
        lab_parts.append(np.where(mask, ids, np.int32(IGNORE_INDEX)))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="herd-tokenize") as pool:
        in_flight = None  # (chunk, future of its ids)
        chunk: list[tuple[Example, list[tuple[str, bool]] | TemplateError]] = []
        n_pieces = 0
        for i, ex in enumerate(examples):
            try:
                ps: list[tuple[str, bool]] | TemplateError = _pieces(*render(ex.messages))
            except TemplateError as e:
                ps = e
            chunk.append((ex, ps))
            n_pieces += 1 if isinstance(ps, TemplateError) else len(ps)
            if n_pieces < BATCH_PIECES and i + 1 < len(examples):
                continue
            texts = [p for _, ps_ in chunk if not isinstance(ps_, TemplateError) for p, _ in ps_]
            fut = pool.submit(encode, texts)
            if in_flight is not None:
                assemble(in_flight[0], in_flight[1].result())
            in_flight, chunk, n_pieces = (chunk, fut), [], 0
        if in_flight is not None:
            assemble(in_flight[0], in_flight[1].result())
    # one int32 array for all ids and one for all labels; every item is a view of its slice
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    ids_parts.clear()
    labels = np.concatenate(lab_parts) if lab_parts else np.zeros(0, np.int32)
    lab_parts.clear()
    return _views(ids, labels, kept), rep, (ids, labels)


def _views(ids: np.ndarray, labels: np.ndarray, kept) -> list[Tokenized]:
    out, pos = [], 0
    for n, source, index in kept:
        out.append(Tokenized(ids[pos:pos + n], labels[pos:pos + n], source, index))
        pos += n
    return out


# -- the tokenized-data cache -------------------------------------------------------------------------

def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def tokenized_cache_dir() -> Path:
    """``${HERD_CACHE:-~/.cache/herd}/tokenized``."""
    from herd.core.paths import cache_dir

    return cache_dir() / "tokenized"


def _tokenizer_identity(tokenizer) -> str | None:
    """Everything about the tokenizer that decides a render's ids; None (no caching) when its vocabulary
    cannot be serialised (a slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    import tokenizers

    h = hashlib.sha256(backend.to_str().encode("utf-8"))
    settings = {"class": type(tokenizer).__name__, "tokenizers": tokenizers.__version__,
                "special": {k: str(getattr(tokenizer, k, None)) for k in
                            ("bos_token", "eos_token", "pad_token", "unk_token")},
                "bos_token_id": getattr(tokenizer, "bos_token_id", None),
                **{k: getattr(tokenizer, k, None)
                   for k in ("add_bos_token", "add_eos_token", "split_special_tokens")}}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


def cache_key(examples: list[Example], template: Template, tokenizer, max_len: int) -> str | None:
    """The content hash that names a cache file (None: this tokenizer cannot be identified)."""
    tok_id = _tokenizer_identity(tokenizer)
    if tok_id is None:
        return None
    h = hashlib.sha256()
    code = b"".join(Path(m.__file__).read_bytes() for m in _code_modules())  # a code change is a new key
    head = {"version": CACHE_VERSION, "template": template.name, "jinja": template.jinja,
            "uses_bos": template.uses_bos, "tokenizer": tok_id, "max_len": max_len,
            "code": hashlib.sha256(code).hexdigest(), "n": len(examples)}
    h.update(json.dumps(head, sort_keys=True, default=str).encode("utf-8"))
    for ex in examples:
        # keys in their own order: a template may iterate over a message's keys
        h.update(json.dumps([ex.source, ex.index, ex.messages], ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _code_modules():
    import herd.templates.base as base

    return (sys.modules[__name__], base)


def _store(path: Path, key: str, items: list[Tokenized], rep: TokenizeReport,
           flat: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write atomically (a private temporary file renamed into place); a failure only costs the cache."""
    sources = list(dict.fromkeys(x.source for x in items))
    src_id = {s: i for i, s in enumerate(sources)}
    meta = {"version": CACHE_VERSION, "key": key, "sources": sources, "kept": rep.kept,
            "dropped": list(rep.dropped.items()), "tokens": rep.tokens, "trained_tokens": rep.trained_tokens,
            "examples_dropped": rep.examples_dropped}
    if flat is None:
        flat = tuple(np.concatenate([getattr(x, a) for x in items]) if items else np.zeros(0, np.int32)
                     for a in ("input_ids", "labels"))
    ids, trained = flat[0], flat[1] != IGNORE_INDEX
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, trained=trained,
                     lengths=np.fromiter((len(x) for x in items), dtype=np.int64, count=len(items)),
                     source=np.fromiter((src_id[x.source] for x in items), dtype=np.int32, count=len(items)),
                     index=np.fromiter((x.index for x in items), dtype=np.int64, count=len(items)),
                     meta=np.array(json.dumps(meta, ensure_ascii=False)))
        os.replace(tmp, path)
    except Exception as e:  # a full disk, a read-only folder, a record index that is not an integer
        print(f"[data] could not write the tokenized cache {path} ({type(e).__name__}: {e}); continuing "
              "without it", file=sys.stderr)
        tmp.unlink(missing_ok=True)


def _load(path: Path, key: str) -> tuple[list[Tokenized], TokenizeReport] | None:
    """The cached result, or None when there is none or it is unreadable, partial or not this key's."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ids, trained = z["ids"], z["trained"]
            lengths, source, index = z["lengths"], z["source"], z["index"]
        sources = meta["sources"]
        n = int(meta["kept"])
        ok = (meta["version"] == CACHE_VERSION and meta["key"] == key and ids.dtype == np.int32
              and trained.dtype == bool and len(ids) == len(trained) == int(lengths.sum())
              and len(lengths) == len(source) == len(index) == n and (lengths >= 0).all()
              and (n == 0 or (0 <= source.min() and source.max() < len(sources))))
        if not ok:
            raise ValueError("contents do not match the key")
        rep = TokenizeReport(kept=n, dropped=Counter(dict(meta["dropped"])), tokens=int(meta["tokens"]),
                             trained_tokens=int(meta["trained_tokens"]),
                             examples_dropped=list(meta["examples_dropped"]))
    except Exception as e:  # any unreadable file is a miss: rebuilt and overwritten
        print(f"[data] ignoring the unreadable tokenized cache {path} ({type(e).__name__}: {e}); rebuilding",
              file=sys.stderr)
        return None
    labels = np.where(trained, ids, np.int32(IGNORE_INDEX))
    kept = zip(lengths.tolist(), (sources[s] for s in source.tolist()), index.tolist())
    return _views(ids, labels, kept), rep
