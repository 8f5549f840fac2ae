"""The demo medical pretraining corpus (a stand-in for GAP-Replay) and its test-leakage guard.

Meditron's corpus (PubMed papers and abstracts, clinical guidelines, 1% replay; recipes.md §4.2) is not
shipped here. The demo uses what is:

- **PubMed text**: the PubMedQA PQA-L abstracts whose PMIDs are *not* in the official test split
  (``test_ground_truth.json``), one document per abstract. §4.2's paper preprocessing is applied
  where it applies: sections keep their labels as ``#`` headers (Meditron: ``#``/``##`` for section /
  subsection headers), labels unified to sentence case ("MATERIALS AND METHODS" → "Materials and
  methods"), and the long answer (the abstract's conclusion) closes the document under
  ``# Conclusions``. PQA-L has no title (its question is a rewrite of the title), so none is
  prepended, and the question is left out: it is what the PubMedQA eval asks.
- **Replay**: general web and encyclopedia text from LLaMA-Factory's demos (C4 ``text`` fields,
  Wikipedia articles one per line), standing in for the RedPajama replay.

PubMedQA readers in :mod:`herd.data.records` return chat ``Example`` records; pretraining needs plain
documents, so these are plain generator functions (re-iterable through ``lambda: f(path)``).

:func:`assert_no_leakage` checks that no evaluation text entered training, by normalised-text hash and
by word n-gram containment (a test abstract pasted inside a longer training document is still found).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from herd.core.errors import DataError
from herd.data.transforms.mixture import Source

PQAL_FILE = "ori_pqal.json"
TEST_FILE = "test_ground_truth.json"


# ---------------------------------------------------------------------------------------------------
# PubMedQA


def _pubmedqa_files(path: str | Path) -> tuple[Path, Path]:
    """(ori_pqal.json, test_ground_truth.json) from the dataset folder or the ori_pqal.json file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    data = path if path.is_file() else folder / PQAL_FILE
    return data, folder / TEST_FILE


def load_pqal(path: str | Path) -> dict[str, dict]:
    """PQA-L records keyed by PMID (file order), each checked for the fields the corpus and evals use."""
    data, _ = _pubmedqa_files(path)
    if not data.is_file():
        raise DataError(str(data), "file not found", hint="the PubMedQA PQA-L file ori_pqal.json")
    try:
        records = json.loads(data.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(str(data), f"invalid JSON ({e})") from None
    if not isinstance(records, dict):
        raise DataError(str(data), "expected one JSON object keyed by PubMed ID")
    for k, (pmid, r) in enumerate(records.items()):
        if not isinstance(r, dict):
            raise DataError(str(data), "record is not an object", record=k)
        for key, kind in (("QUESTION", str), ("CONTEXTS", list), ("LABELS", list), ("final_decision", str),
                          ("LONG_ANSWER", str)):
            if not isinstance(r.get(key), kind):
                raise DataError(str(data), f"PMID {pmid}: missing or not a {kind.__name__}", record=k, field=key)
        if r["final_decision"] not in ("yes", "no", "maybe"):
            raise DataError(str(data), f"PMID {pmid}: final_decision {r['final_decision']!r} is not yes/no/maybe",
                            record=k, field="final_decision")
    return records


def load_test_labels(path: str | Path) -> dict[str, str]:
    """The official test split: ``{PMID: "yes"|"no"|"maybe"}`` from test_ground_truth.json."""
    _, test = _pubmedqa_files(path)
    if not test.is_file():
        raise DataError(str(test), "file not found",
                        hint="PubMedQA's official test ids (test_ground_truth.json) are needed to exclude them")
    try:
        labels = json.loads(test.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(str(test), f"invalid JSON ({e})") from None
    if not isinstance(labels, dict):
        raise DataError(str(test), "expected one JSON object {PMID: label}")
    return {str(k): v for k, v in labels.items()}


# Meditron's PubMedQA instruction (recipes.md §4.4, Table 2 / evaluation/instructions.json), verbatim: the
# fine-tuning data and the evaluation prompts share it
PUBMEDQA_INSTRUCTION = (
    "As an expert doctor in clinical science and medical knowledge, can you tell me if the following statement "
    "is correct? Answer yes, no, or maybe.")
PUBMEDQA_LABELS = ("yes", "no", "maybe")
SPLITS = ("train", "dev", "test")


def pubmedqa_prompt(record: Mapping) -> str:
    """An item's body, upstream ``ClosedPubMedQA``: the abstract's contexts joined by newlines, then the question."""
    return "\n".join(record["CONTEXTS"]) + "\n" + record["QUESTION"]


def pqal_splits(path: str | Path, *, dev_size: int = 100, seed: int = 42) -> dict[str, list[str]]:
    """PMIDs of each split: ``test`` = the official 500 (test-file order); ``dev`` = the ``dev_size``
    non-test PMIDs of lowest ``sha256(seed, PMID)`` rank; ``train`` = the other non-test PMIDs. Dev and
    train are in ori_pqal.json order; the three never overlap, and adding files elsewhere moves nothing."""
    import hashlib

    records, test = load_pqal(path), load_test_labels(path)
    missing = [p for p in test if p not in records]
    if missing:
        raise DataError(str(path), f"test PMIDs {missing[:5]} are not in ori_pqal.json")
    pool = [p for p in records if p not in test]
    if not 0 <= dev_size < len(pool):
        raise DataError(str(path), f"dev_size {dev_size} must leave training questions (have {len(pool)} non-test)",
                        field="dev_size")
    rank = sorted(pool, key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
    dev = set(rank[:dev_size])
    return {"train": [p for p in pool if p not in dev], "dev": [p for p in pool if p in dev], "test": list(test)}


def _header(label: str) -> str:
    label = " ".join(label.split())
    return label[:1].upper() + label[1:].lower() if label else "Abstract"


def pubmedqa_document(record: Mapping) -> str:
    """One PQA-L abstract as a pretraining document: ``# Section`` headers, conclusion last."""
    contexts, labels = record["CONTEXTS"], record.get("LABELS") or []
    parts = []
    for i, text in enumerate(contexts):
        label = labels[i] if i < len(labels) else ""
        parts.append(f"# {_header(label)}\n{text.strip()}")
    if record.get("LONG_ANSWER", "").strip():
        parts.append(f"# Conclusions\n{record['LONG_ANSWER'].strip()}")
    return "\n\n".join(parts)


def pubmedqa_train_documents(path: str | Path, exclude_test: bool = True) -> Iterator[str]:
    """PQA-L abstracts as documents (file order), without the official test PMIDs unless told otherwise."""
    records = load_pqal(path)
    test = set(load_test_labels(path)) if exclude_test else set()
    for pmid, r in records.items():
        if pmid not in test:
            yield pubmedqa_document(r)


def pubmedqa_test_texts(path: str | Path) -> Iterator[tuple[str, str]]:
    """``(PMID, text)`` for every context paragraph and long answer of the official test split."""
    records = load_pqal(path)
    for pmid in load_test_labels(path):
        r = records.get(pmid)
        if r is None:
            continue
        for text in r["CONTEXTS"]:
            yield pmid, text
        if r["LONG_ANSWER"].strip():
            yield pmid, r["LONG_ANSWER"]


# ---------------------------------------------------------------------------------------------------
# Replay text


def c4_documents(path: str | Path) -> Iterator[str]:
    """The ``text`` of each line of a C4-style JSON Lines file (blank texts skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise DataError(str(path), f"invalid JSON ({e})", line=lineno) from None
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise DataError(str(path), "no string 'text' field", line=lineno, field="text")
            if text.strip():
                yield text


def wiki_documents(path: str | Path) -> Iterator[str]:
    """One article per non-blank line (LLaMA-Factory's wiki_demo.txt)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def replay_documents(folder: str | Path) -> Iterator[str]:
    """C4 then Wikipedia documents from the llamafactory_pretrain_text_demo folder."""
    folder = Path(folder)
    yield from c4_documents(folder / "c4_demo.jsonl")
    yield from wiki_documents(folder / "wiki_demo.txt")


def demo_sources(pubmedqa_dir: str | Path, replay_dir: str | Path, *, replay_share: float = 0.01
                 ) -> list[Source]:
    """The demo GAP-Replay mixture: PubMedQA train abstracts + ``replay_share`` of general text (Meditron: ~1%)."""
    return [Source("pubmed", lambda: pubmedqa_train_documents(pubmedqa_dir), 1.0 - replay_share),
            Source("replay", lambda: replay_documents(replay_dir), replay_share)]


# ---------------------------------------------------------------------------------------------------
# Leakage guard

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation and whitespace runs → one space (formatting cannot hide a copy)."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def _grams(words: list[str], n: int) -> Iterator[int]:
    for i in range(len(words) - n + 1):
        yield hash(tuple(words[i:i + n]))


def assert_no_leakage(train_docs: Iterable[str], test_texts: Iterable[tuple[str, str]] | Mapping[str, str], *,
                      ngram: int = 13, threshold: float = 0.5, source: str = "training corpus") -> dict:
    """Raise :class:`DataError` naming the test id whose text is in the training documents.

    A test text leaks when a training document equals it after :func:`normalize_text` (hash match), or
    when at least ``threshold`` of its word ``ngram``-grams occur in the training documents (a test
    abstract embedded in a longer document, or split over several). 13-grams follow the GPT-3
    contamination check; texts shorter than ``ngram`` words are matched by hash only. Returns counts.
    """
    items = list(test_texts.items() if isinstance(test_texts, Mapping) else test_texts)
    exact: dict[str, str] = {}
    gram_owner: dict[int, list[int]] = {}
    unit_grams: list[int] = []
    for u, (tid, text) in enumerate(items):
        exact.setdefault(text_hash(text), str(tid))
        grams = set(_grams(normalize_text(text).split(), ngram))
        unit_grams.append(len(grams))
        for g in grams:
            gram_owner.setdefault(g, []).append(u)
    seen: list[set[int]] = [set() for _ in items]
    docs = 0
    for d, doc in enumerate(train_docs):
        docs += 1
        norm = normalize_text(doc)
        h = hashlib.sha256(norm.encode("utf-8")).hexdigest()
        if h in exact:
            raise DataError(source, f"test item {exact[h]} leaks into training document {d} (identical text "
                            "after normalisation)", hint="drop the test ids from the training data")
        for g in _grams(norm.split(), ngram):
            for u in gram_owner.get(g, ()):
                seen[u].add(g)
    for u, (tid, _) in enumerate(items):
        if unit_grams[u] and len(seen[u]) / unit_grams[u] >= threshold:
            raise DataError(source, f"test item {tid} leaks into training: {len(seen[u])}/{unit_grams[u]} of the "
                            f"{ngram}-word shingles of one of its texts occur in the training documents",
                            hint="drop the test ids from the training data")
    overlap = max((len(seen[u]) / n for u, n in enumerate(unit_grams) if n), default=0.0)
    return {"train_docs": docs, "test_texts": len(items), "test_ids": len({t for t, _ in items}),
            "hash_only": sum(1 for n in unit_grams if n == 0), "max_overlap": round(overlap, 4),
            "ngram": ngram, "threshold": threshold}
