"""Document sources for continued pretraining: raw text and code trees, streamed.

A pretraining source yields plain-text documents one at a time, so a corpus of any size passes
through tokenization and packing with flat memory. Each format has a ``check`` that runs when the
recipe loads (before any model) and a ``stream`` that yields documents. Every format reports what it
read, kept and dropped (and why) in a :class:`CorpusReport`.

Formats:
- ``text``: ``.jsonl`` (a ``text`` field per line, or the field named in ``options.field``) or a
  ``.txt`` file, one document per line (LLaMA-Factory's pretraining demo layout);
- ``code``: a directory tree, a glob, or ``stdlib:`` (the running interpreter's standard library,
  real code on every machine), with size/binary/licence filters and content-hash dedup.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import random
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import DataError
from herd.core.registry import DOC_FORMATS


def register_doc_format(name: str):
    """Class decorator: a document format with ``check(path, options)`` and ``stream(path, options, report)``."""
    return DOC_FORMATS.register(name, lambda cls: (cls.check, cls.stream))


@dataclass
class CorpusReport:
    source: str
    seen: int = 0
    kept: int = 0
    bytes: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    by_extension: Counter = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def as_dict(self) -> dict:
        return {"source": self.source, "seen": self.seen, "kept": self.kept, "bytes": self.bytes,
                "dropped": dict(self.dropped), "by_extension": dict(self.by_extension)}

    def summary(self) -> str:
        drops = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())) or "none"
        return f"{self.source}: {self.kept} of {self.seen} documents kept ({self.bytes:,} bytes); dropped: {drops}"


# -- text ---------------------------------------------------------------------------------------------

@register_doc_format("text")
class TextFormat:
    @staticmethod
    def check(path: Path, options: dict) -> None:
        if not path.is_file():
            raise DataError(str(path), "file not found")
        if path.suffix not in (".jsonl", ".txt", ".json"):
            raise DataError(str(path), "text sources are .jsonl (a 'text' field per line) or .txt (one document "
                            "per line)")
        key = options.get("field", "text")
        if path.suffix in (".jsonl", ".json"):
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(str(path), f"invalid JSON ({e.msg})", line=n) from None
                    if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                        raise DataError(str(path), "expected a string", line=n,
                                        field=key)

    @staticmethod
    def stream(path: Path, options: dict, report: CorpusReport) -> Iterator[str]:
        key = options.get("field", "text")
        min_chars = int(options.get("min_chars", 1))
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                report.seen += 1
                text = json.loads(line)[key] if path.suffix != ".txt" else line.rstrip("\n")
                if len(text.strip()) < min_chars:
                    report.drop("shorter than min_chars")
                    continue
                report.kept += 1
                report.bytes += len(text.encode("utf-8"))
                yield text


# -- code ---------------------------------------------------------------------------------------------

# Licence markers found in file headers. A file whose header names a licence outside ``licenses``
# is dropped; a file naming none is kept (most files carry no header; the repository licence governs).
_LICENSE_PATTERNS = {
    "GPL": r"GNU (Affero |Lesser )?General Public License|SPDX-License-Identifier:\s*(A|L)?GPL",
    "MIT": r"\bMIT License\b|SPDX-License-Identifier:\s*MIT",
    "Apache-2.0": r"Apache License,? Version 2\.0|SPDX-License-Identifier:\s*Apache-2\.0",
    "BSD": r"\bBSD\b.{0,20}[Ll]icen[sc]e|SPDX-License-Identifier:\s*BSD",
    "PSF": r"Python Software Foundation License|\bPSF\b.{0,20}[Ll]icen[sc]e|SPDX-License-Identifier:\s*PSF",
}
DEFAULT_LICENSES = ("MIT", "Apache-2.0", "BSD", "PSF")  # permissive; GPL-family headers are dropped
DEFAULT_EXCLUDE = ("*/test/*", "*/tests/*", "*/site-packages/*", "*/__pycache__/*", "*/idlelib/*",
                   "*/lib2to3/tests/*", "*/turtledemo/*")


def detect_license(text: str, header_lines: int = 40) -> str | None:
    head = "\n".join(text.splitlines()[:header_lines])
    for name, pat in _LICENSE_PATTERNS.items():
        if re.search(pat, head):
            return name
    return None


def resolve_code_root(spec: str) -> str:
    """``stdlib:`` → the interpreter's standard library folder; anything else unchanged."""
    if spec == "stdlib:" or spec == "stdlib":
        return sysconfig.get_paths()["stdlib"]
    return spec


def _files(spec: str, options: dict) -> list[Path]:
    root = resolve_code_root(spec)
    exts = tuple(options.get("extensions", [".py"]))
    exclude = tuple(options.get("exclude", DEFAULT_EXCLUDE))
    if any(ch in root for ch in "*?["):
        cands = [Path(p) for p in glob.glob(root, recursive=True)]
    else:
        base = Path(root)
        cands = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in exts]
    out = sorted(p for p in cands if p.is_file() and not any(fnmatch.fnmatch(str(p), pat) for pat in exclude))
    if options.get("shuffle") is not None:  # a seeded order, so a token budget samples the whole tree
        random.Random(int(options["shuffle"])).shuffle(out)
    return out  # sorted (then seeded): the same corpus gives the same document order everywhere


@register_doc_format("code")
class CodeFormat:
    @staticmethod
    def check(path: Path, options: dict) -> None:
        root = resolve_code_root(str(path))
        if not any(ch in root for ch in "*?[") and not Path(root).exists():
            raise DataError(root, "code corpus not found (a directory, a glob, or 'stdlib:')")
        unknown = set(options) - {"extensions", "exclude", "max_bytes", "min_bytes", "licenses", "max_files",
                                  "dedup", "shuffle"}
        if unknown:
            raise DataError(root, f"unknown code-corpus option(s) {sorted(unknown)}", field="options")
        if not _files(str(path), options):
            raise DataError(root, f"no source files match (extensions {options.get('extensions', ['.py'])})")

    @staticmethod
    def stream(path: Path, options: dict, report: CorpusReport) -> Iterator[str]:
        max_bytes = int(options.get("max_bytes", 200_000))  # StarCoder-style size cap: huge files are data
        min_bytes = int(options.get("min_bytes", 64))
        allowed = set(options.get("licenses", DEFAULT_LICENSES))
        max_files = options.get("max_files")
        seen_hashes: set[str] = set()
        for p in _files(str(path), options):
            if max_files is not None and report.kept >= int(max_files):
                break
            report.seen += 1
            raw = p.read_bytes()
            if len(raw) > max_bytes:
                report.drop(f"larger than {max_bytes} bytes")
                continue
            if len(raw) < min_bytes:
                report.drop(f"smaller than {min_bytes} bytes")
                continue
            if b"\x00" in raw[:8192]:
                report.drop("binary")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                report.drop("not UTF-8")
                continue
            lic = detect_license(text)
            if lic is not None and lic not in allowed:
                report.drop(f"licence {lic} not allowed")
                continue
            if options.get("dedup", True):
                h = hashlib.sha256(text.replace("\r\n", "\n").strip().encode()).hexdigest()
                if h in seen_hashes:
                    report.drop("duplicate content")
                    continue
                seen_hashes.add(h)
            report.kept += 1
            report.bytes += len(raw)
            report.by_extension[p.suffix] += 1
            yield text


# -- PubMedQA (Meditron's demo medical corpus) ---------------------------------------------------------

@register_doc_format("pubmedqa")
class PubMedQAFormat:
    """PQA-L abstracts (contexts under ``#`` section headers + the long answer) whose PMID is NOT in the
    official test split (``herd.data.documents.pubmedqa``); ``path`` is the dataset folder or ori_pqal.json."""

    @staticmethod
    def check(path: Path, options: dict) -> None:
        from herd.data.documents.pubmedqa import load_pqal, load_test_labels

        unknown = set(options) - {"exclude_test"}
        if unknown:
            raise DataError(str(path), f"unknown pubmedqa option(s) {sorted(unknown)}", field="options")
        load_pqal(path)
        load_test_labels(path)

    @staticmethod
    def stream(path: Path, options: dict, report: CorpusReport) -> Iterator[str]:
        from herd.data.documents.pubmedqa import load_pqal, load_test_labels, pubmedqa_document

        test = set(load_test_labels(path)) if options.get("exclude_test", True) else set()
        for pmid, record in load_pqal(path).items():  # counted as read, so a budget cut shows as such
            report.seen += 1
            if pmid in test:
                report.drop("in the official test split")
                continue
            doc = pubmedqa_document(record)
            report.kept += 1
            report.bytes += len(doc.encode("utf-8"))
            yield doc


def check_source(fmt: str, path: Path, options: dict) -> None:
    if fmt not in DOC_FORMATS:
        raise DataError(str(path), f"unknown document format '{fmt}' (known: {DOC_FORMATS.known()})", field="format")
    DOC_FORMATS[fmt][0](path, options)


def stream_source(fmt: str, path: Path, options: dict, report: CorpusReport) -> Iterator[str]:
    return DOC_FORMATS[fmt][1](path, options, report)
