"""The validated record every reader produces, and the reader registry.

An :class:`Example` is a conversation in the neutral message form that templates render:
``[{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}]``. Extra keys travel to the
template (Alpaca's ``input``). ``source`` and ``index`` say where the record came from so that every
later error can still name the file and record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import DataError
from herd.core.jsonlines import json_lines
from herd.core.registry import READERS


@dataclass
class Example:
    messages: list[dict]
    source: str
    index: int
    meta: dict = field(default_factory=dict)

    def key(self) -> str:
        """A stable content key (for deterministic splits and dedup)."""
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False)


Reader = Callable[..., list[Example]]
def register_reader(fmt: str):
    """Decorator of a reader module: ``fmt`` → ``reader(path, **options) -> list[Example]``."""
    return READERS.register(fmt)


def read_text_file(path: str | Path) -> str:
    """UTF-8 text, or a DataError that names the line of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(str(path), f"corrupt gzip file ({e})") from None
    if not raw.strip():
        raise DataError(str(path), "file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(str(path), f"not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})", line=line,
                        hint="re-save the file as UTF-8") from None


def read_json_records(path: str | Path) -> list[tuple[int | None, object]]:
    """A JSON array (records numbered from 0, no line) or JSON Lines (each record with its line)."""
    path = Path(path)
    text = read_text_file(path)
    stripped = text.lstrip()
    if path.suffixes[-2:] == [".jsonl", ".gz"] or path.suffix == ".jsonl" or (not stripped.startswith("[") and not stripped.startswith("{")):
        out = []
        for lineno, line in enumerate(json_lines(text), 1):
            if not line.strip():
                continue
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(str(path), f"invalid JSON ({e.msg}, column {e.colno})", line=lineno) from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"invalid JSON ({e.msg}, column {e.colno}); truncated file?",
                        line=e.lineno) from None
    if isinstance(data, dict):
        # one record, or LLaMA-Factory/HF style {"data": [...]} wrappers
        for key in ("data", "train", "records", "examples"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list):
        raise DataError(str(path), f"expected a JSON array of records, got {type(data).__name__}")
    if not data:
        raise DataError(str(path), "no records")
    return [(None, rec) for rec in data]


def require_str(path, rec: dict, field_name: str, *, index: int, line: int | None, allow_empty=False,
                optional=False) -> str:
    """A string field, with an error that names file, record, line and field."""
    if field_name not in rec or rec[field_name] is None:
        if optional:
            return ""
        raise DataError(str(path), "missing field", record=index, line=line, field=field_name)
    val = rec[field_name]
    if not isinstance(val, str):
        raise DataError(str(path), f"expected a string, got {type(val).__name__}", record=index, line=line,
                        field=field_name)
    if not allow_empty and not val.strip():
        raise DataError(str(path), "empty", record=index, line=line, field=field_name)
    if "\x00" in val or "\ue000" in val or "\ue001" in val:
        raise DataError(str(path), "contains a NUL or reserved private-use character", record=index,
                        line=line, field=field_name)
    return val


def load_examples(path: str | Path, fmt: str, **options) -> list[Example]:
    """Read and validate a whole file with the reader registered for ``fmt``."""
    if fmt not in READERS:
        raise DataError(str(path), f"unknown format '{fmt}'; known: {READERS.known()}")
    return READERS[fmt](path, **options)
