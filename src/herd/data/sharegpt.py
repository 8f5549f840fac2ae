"""ShareGPT conversations: FastChat's and LLaMA-Factory's ``{"conversations": [{"from", "value"}]}``.

Accepted: a JSON array or JSON Lines of records, one record object, or one bare conversation (a list
of turns). Roles: ``human``/``user`` -> user, ``gpt``/``assistant`` -> assistant, ``system``,
``observation``/``tool`` -> tool, and LLaMA-Factory's ``function_call`` -> an assistant turn whose
content is the call's JSON and whose ``tool_calls`` hold it parsed (OpenAI shape). LLaMA-Factory's
top-level ``system`` string becomes the system turn and ``tools`` (a JSON string) goes to
``meta["tools"]``; other top-level keys (``id``, ``model``, ...) go to ``meta`` as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from herd.data.conversation import Loc, check_conversation, collect, data_error
from herd.data.records import Example, read_json_records, register_reader
from herd.data.report import DataReport

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "system": "system", "observation": "tool", "tool": "tool", "function_call": "assistant"}


def parse_tools(path, value, *, index: int, line: int | None, field: str = "tools") -> list:
    """Tool schemas given as a list or as a JSON-encoded list (LLaMA-Factory)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as e:
            raise data_error(path, f"not valid JSON ({e.msg})", reason="invalid tools", record=index, line=line,
                             field=field) from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise data_error(path, "expected a list of tool schemas", reason="invalid tools", record=index,
                         line=line, field=field)
    return value


def tool_call(path, text: str, *, index: int, line: int | None, field: str) -> dict:
    """A ShareGPT ``function_call`` value (``{"name", "arguments"}`` JSON) in OpenAI ``tool_calls`` shape."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError as e:
        raise data_error(path, f"function_call is not valid JSON ({e.msg})", reason="invalid function call",
                         record=index, line=line, field=field) from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise data_error(path, 'function_call must be {"name": ..., "arguments": ...}',
                         reason="invalid function call", record=index, line=line, field=field)
    return {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}


def sharegpt_messages(path, turns, *, index: int, line: int | None, key: str = "conversations"
                      ) -> tuple[list[dict], list[str]]:
    """ShareGPT turns -> neutral messages and each turn's field name (unknown roles kept for the checker)."""
    if not isinstance(turns, list):
        raise data_error(path, f"expected a list of turns, got {type(turns).__name__}", reason="invalid record",
                         record=index, line=line, field=key)
    msgs, names = [], []
    for t, turn in enumerate(turns):
        name = f"{key}[{t}]"
        if not isinstance(turn, dict):
            raise data_error(path, f"expected a turn object, got {type(turn).__name__}", reason="invalid record",
                             record=index, line=line, field=name)
        for k in ("from", "value"):
            if k not in turn:
                hint = "this looks like OpenAI messages: use format openai_messages" if "role" in turn else None
                raise data_error(path, "missing field", reason="invalid record", record=index, line=line,
                                 field=f"{name}.{k}", hint=hint)
        raw, value = turn["from"], turn["value"]
        if not isinstance(value, str):
            raise data_error(path, f"expected a string, got {type(value).__name__}", reason="invalid record",
                             record=index, line=line, field=f"{name}.value")
        if "\x00" in value or "\ue000" in value or "\ue001" in value:
            raise data_error(path, "contains a NUL or reserved private-use character", reason="invalid record",
                             record=index, line=line, field=f"{name}.value")
        role = ROLE_MAP.get(raw, raw) if isinstance(raw, str) else repr(raw)
        msg = {"role": role, "content": value}
        if raw == "function_call":
            msg["tool_calls"] = [tool_call(path, value, index=index, line=line, field=f"{name}.value")]
        msgs.append(msg)
        names.append(name)
    return msgs, names


def _is_bare_conversation(records: list) -> bool:
    return all(isinstance(r, dict) and "from" in r and "value" in r and "conversations" not in r
               for _, r in records)


def _example(path, rec, index: int, line: int | None, *, repair: bool, report: DataReport,
             need_reply: bool) -> Example | None:
    if not isinstance(rec, dict):
        raise data_error(path, f"expected a record object, got {type(rec).__name__}", reason="invalid record",
                         record=index, line=line)
    if "conversations" not in rec:
        hint = "this looks like OpenAI messages: use format openai_messages" if "messages" in rec else None
        raise data_error(path, "missing field", reason="invalid record", record=index, line=line,
                         field="conversations", hint=hint)
    msgs, names = sharegpt_messages(path, rec["conversations"], index=index, line=line)
    meta = {k: v for k, v in rec.items() if k not in ("conversations", "system", "tools")}
    if rec.get("system"):
        if not isinstance(rec["system"], str):
            raise data_error(path, "expected a string", reason="invalid record", record=index, line=line,
                             field="system")
        if msgs and msgs[0]["role"] == "system":
            raise data_error(path, "both a top-level system prompt and a system turn", reason="two system prompts",
                             record=index, line=line, field="system")
        msgs, names = [{"role": "system", "content": rec["system"]}, *msgs], ["system", *names]
    if rec.get("tools"):
        meta["tools"] = parse_tools(path, rec["tools"], index=index, line=line)
    if line is not None:
        meta["line"] = line
    loc = Loc(str(path), index, line, names, role_key="from", content_key="value")
    checked = check_conversation(msgs, loc, repair=repair, report=report, need_reply=need_reply)
    return None if checked is None else Example(messages=checked, source=str(path), index=index, meta=meta)


@register_reader("sharegpt")
def read_sharegpt(path: str | Path, *, repair: bool = False, need_reply: bool = True,
                  report: DataReport | None = None) -> list[Example]:
    """Read and validate ShareGPT records. ``repair``: apply the documented repairs and drop (and count)
    records that stay invalid, instead of stopping at the first bad record."""
    report = report if report is not None else DataReport()
    records = read_json_records(path)
    if _is_bare_conversation(records):
        records = [(records[0][0], {"conversations": [r for _, r in records]})]
    return collect(path, records, lambda rec, index, line: _example(
        path, rec, index, line, repair=repair, report=report, need_reply=need_reply), repair=repair, report=report)

