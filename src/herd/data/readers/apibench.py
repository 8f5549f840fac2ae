"""APIBench files, validated with file:line:field errors (shared dataset ``gorilla_apibench``).

- API database (``api/*_api.jsonl``): one documentation entry per line; ``domain`` and ``api_call`` are
  what retrieval and AST matching need.
- APIBench records (``apibench/*.json``, JSON Lines despite the name): ``code`` holds the instruction and
  the reference answer in one of two layouts, ``###Instruction: …\\n###Output: …`` (eval files) or
  ``{'Instruction': …, 'Output': …}`` (TorchHub train); ``api_data`` is the reference API entry.
- Question files (``questions_*_0_shot.jsonl``) and response files (``response_*.jsonl``) as released.

The ``apibench`` reader turns records into SFT examples, with or without retrieved documentation
(recipes.md §8.3): ``retrieval: none`` (zero-shot), ``oracle`` (the record's own API entry, Gorilla's
retriever-aware training) or ``bm25`` (top-k of the API database).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from herd.core.errors import DataError
from herd.core.jsonlines import json_lines
from herd.data.records import Example, read_text_file, register_reader, require_str

_HASH_LAYOUT = re.compile(r"\s*###\s*Instruction:\s*(.*?)(?:\n\s*###\s*Output:\s*(.*))?\s*$", re.S)
_DICT_HEAD = "{'Instruction':"
_DICT_SEP = ", 'Output':"


@dataclass
class ApibenchRecord:
    instruction: str
    output: str | None  # None: the record has no answer; see ``complete`` for a cut one
    complete: bool
    api_call: str
    provider: str
    api_data: dict
    line: int | None

    @property
    def domain(self) -> str:
        return self.api_data["domain"]


@dataclass
class Question:
    question_id: int
    text: str
    line: int | None


@dataclass
class Response:
    question_id: int
    text: str
    line: int | None


def read_json_lines(path: str | Path) -> list[tuple[int, object]]:
    """``(line number, value)`` for every non-blank line: every APIBench file is JSON Lines, whatever
    its suffix (the ``.json`` ones too)."""
    out = []
    for lineno, text in enumerate(json_lines(read_text_file(path)), 1):
        if not text.strip():
            continue
        try:
            out.append((lineno, json.loads(text)))
        except json.JSONDecodeError as e:
            raise DataError(str(path), f"invalid JSON ({e.msg}, column {e.colno}); every line must be one "
                            "JSON object", line=lineno) from None
    return out


def _obj(path, rec, index, line) -> dict:
    if not isinstance(rec, dict):
        raise DataError(str(path), f"expected a JSON object, got {type(rec).__name__}", record=index, line=line)
    return rec


def _api_entry(path, entry, index, line, prefix="") -> dict:
    """An API documentation entry: an object whose ``domain`` and ``api_call`` are non-empty strings."""
    if not isinstance(entry, dict):
        raise DataError(str(path), f"expected an API entry object, got {type(entry).__name__}", record=index,
                        line=line, field=prefix.rstrip(".") or None)
    for name in ("domain", "api_call"):
        val = entry.get(name)
        if not isinstance(val, str) or not val.strip():
            raise DataError(str(path), "missing field" if val is None else f"expected a non-empty string, got "
                            f"{type(val).__name__} {str(val)[:40]!r}", record=index, line=line, field=prefix + name)
    return entry


def read_api_database(path: str | Path) -> list[dict]:
    """The API documentation entries, in file order (AST matching takes the first match)."""
    return [_api_entry(path, _obj(path, rec, i, line), i, line) for i, (line, rec) in enumerate(read_json_lines(path))]


def split_code(code: str) -> tuple[str, str | None, bool]:
    """``(instruction, output, complete)`` of an APIBench ``code`` field (both released layouts).

    ``complete`` is False when the dict layout lost its closing brace (one TorchHub train record is cut
    mid-answer)."""
    if code.lstrip().startswith(_DICT_HEAD):
        body = code.lstrip()[len(_DICT_HEAD):]
        if _DICT_SEP not in body:
            return body.lstrip(), None, False
        instruction, output = body.split(_DICT_SEP, 1)
        output = output.strip()
        complete = output.endswith("}")
        return instruction.lstrip(), (output[:-1].rstrip() if complete else output), complete
    m = _HASH_LAYOUT.match(code)
    if not m:
        raise ValueError("neither '###Instruction: …' nor \"{'Instruction': …}\" layout")
    out = m.group(2)
    return m.group(1), (out.strip() if out is not None else None), True


def read_apibench(path: str | Path) -> list[ApibenchRecord]:
    """APIBench records; line i (from 1) of an eval file is the reference of ``question_id`` i."""
    out = []
    for i, (line, rec) in enumerate(read_json_lines(path)):
        rec = _obj(path, rec, i, line)
        code = require_str(path, rec, "code", index=i, line=line)
        try:
            instruction, output, complete = split_code(code)
        except ValueError as e:
            raise DataError(str(path), str(e), record=i, line=line, field="code") from None
        if not instruction.strip():
            raise DataError(str(path), "empty instruction", record=i, line=line, field="code")
        api_data = _api_entry(path, rec.get("api_data"), i, line, prefix="api_data.")
        out.append(ApibenchRecord(instruction, output, complete,
                                  require_str(path, rec, "api_call", index=i, line=line),
                                  require_str(path, rec, "provider", index=i, line=line), api_data, line))
    return out


def _qid(path, rec, i, line) -> int:
    qid = rec.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int) or qid < 1:
        raise DataError(str(path), f"expected a positive integer, got {qid!r}", record=i, line=line,
                        field="question_id")
    return qid


def read_questions(path: str | Path) -> list[Question]:
    out, seen = [], set()
    for i, (line, rec) in enumerate(read_json_lines(path)):
        rec = _obj(path, rec, i, line)
        qid = _qid(path, rec, i, line)
        if qid in seen:
            raise DataError(str(path), f"question_id {qid} appears twice", record=i, line=line, field="question_id")
        seen.add(qid)
        out.append(Question(qid, require_str(path, rec, "text", index=i, line=line), line))
    return out


def read_responses(path: str | Path) -> list[Response]:
    out = []
    for i, (line, rec) in enumerate(read_json_lines(path)):
        rec = _obj(path, rec, i, line)
        out.append(Response(_qid(path, rec, i, line),
                            require_str(path, rec, "text", index=i, line=line, allow_empty=True), line))
    return out


def reference_domains(records: list[ApibenchRecord], questions_path: str | Path, ids) -> dict[int, str]:
    """``question_id → domain`` of the reference API (line ``question_id`` of the eval file)."""
    out = {}
    for qid in ids:
        if qid > len(records):
            raise DataError(str(questions_path), f"question_id {qid} has no reference: the APIBench eval file "
                            f"holds {len(records)} records", field="question_id")
        out[qid] = records[qid - 1].domain
    return out


@register_reader("apibench")
def read_apibench_examples(path: str | Path, retrieval: str = "none", api_database: str | None = None,
                           top_k: int = 1) -> list[Example]:
    """SFT examples from APIBench records: user = the question (+ documentation), assistant = the answer.

    Records without a complete answer are dropped and reported on stderr (the published TorchHub train
    file has one cut mid-answer); training on a cut answer would teach the model to stop mid-call."""
    from herd.data.readers.apibench_prompts import question_text, user_prompt
    from herd.data.readers.retriever import BM25Retriever

    if retrieval not in ("none", "oracle", "bm25"):
        raise DataError(str(path), f"retrieval must be none, oracle or bm25 (got '{retrieval}')")
    retriever = None
    if retrieval == "bm25":
        if not api_database:
            raise DataError(str(path), "retrieval: bm25 needs the api_database option (an api/*_api.jsonl file)")
        from herd.core.paths import resolve_data_path

        entries = read_api_database(resolve_data_path(api_database, Path(path).parent))
        retriever = BM25Retriever(entries)
    out, dropped = [], []
    for i, rec in enumerate(read_apibench(path)):
        if rec.output is None or not rec.complete or not rec.output.strip():
            dropped.append(rec.line)
            continue
        question = question_text(rec.instruction)
        docs = ([rec.api_data] if retrieval == "oracle"
                else retriever.retrieve(question, top_k) if retriever else [])
        messages = [{"role": "user", "content": user_prompt(question, docs)},
                    {"role": "assistant", "content": rec.output}]
        out.append(Example(messages=messages, source=str(path), index=i,
                           meta={"line": rec.line, "domain": rec.domain, "api_call": rec.api_call,
                                 "retrieval": retrieval}))
    if dropped:
        print(f"[data] {path}: {len(dropped)} record(s) without a complete answer dropped (lines "
              f"{', '.join(str(x) for x in dropped[:10])})", file=sys.stderr)
    if not out:
        raise DataError(str(path), "no record with an answer (an APIBench eval file without ###Output?)")
    return out
