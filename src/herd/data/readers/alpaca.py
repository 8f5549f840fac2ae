"""Alpaca records: ``instruction``, optional ``input``, ``output`` (JSON array or JSON Lines).

Column names can be remapped LLaMA-Factory style (``columns={"instruction": "prompt", "input":
"query", "output": "response"}``). A LLaMA-Factory ``history`` list of ``[user, assistant]`` pairs
becomes earlier exchanges. Other keys (Stanford's pre-rendered ``text``) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from herd.core.errors import DataError
from herd.data.records import Example, read_json_records, register_reader, require_str

DEFAULT_COLUMNS = {"instruction": "instruction", "input": "input", "output": "output", "history": "history"}


@register_reader("alpaca")
def read_alpaca(path: str | Path, columns: dict | None = None) -> list[Example]:
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    out: list[Example] = []
    for index, (line, rec) in enumerate(read_json_records(path)):
        if not isinstance(rec, dict):
            raise DataError(str(path), f"expected an object with '{cols['instruction']}' and "
                            f"'{cols['output']}', got {type(rec).__name__}", record=index, line=line)
        instruction = require_str(path, rec, cols["instruction"], index=index, line=line)
        inp = require_str(path, rec, cols["input"], index=index, line=line, allow_empty=True, optional=True)
        output = require_str(path, rec, cols["output"], index=index, line=line)
        messages: list[dict] = []
        history = rec.get(cols["history"])
        if history:
            if not isinstance(history, list) or not all(
                    isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in history):
                raise DataError(str(path), "expected a list of [instruction, response] string pairs",
                                record=index, line=line, field=cols["history"])
            for user, assistant in history:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        user_msg = {"role": "user", "content": instruction}
        if inp.strip():
            user_msg["input"] = inp
        messages += [user_msg, {"role": "assistant", "content": output}]
        out.append(Example(messages=messages, source=str(path), index=index,
                           meta={"line": line, "has_input": bool(inp.strip())}))
    return out
