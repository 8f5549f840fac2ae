"""OpenAI chat messages: ``{"messages": [{"role", "content"}, ...], "tools": [...]}`` per record.

Accepted: a JSON array or JSON Lines of records, one record object, or one bare conversation (a list of
messages). Roles ``system`` (``developer`` is read as system), ``user``, ``assistant``, ``tool``.
``content`` is a string or a list of ``{"type": "text", "text"}`` parts (joined as they are; other part
types are refused). An assistant message with ``tool_calls`` and no content gets the calls' JSON as
content, as ShareGPT's ``function_call`` turns have, so text-only templates still render it.
Extra message keys (``tool_call_id``, ``name``) and record keys travel along. A KTO record with
``label: false`` is an undesirable reply, refused here (read it with ``preference_sft``).
"""

from __future__ import annotations

from pathlib import Path

from herd.data.conversation import Loc, check_conversation, collect, data_error
from herd.data.messages import openai_messages, parse_tools
from herd.data.records import Example, read_json_records, register_reader
from herd.data.report import DataReport


def _example(path, rec, index: int, line: int | None, *, repair: bool, report: DataReport,
             need_reply: bool) -> Example | None:
    if not isinstance(rec, dict) or "messages" not in rec:
        hint = "this looks like ShareGPT: use format sharegpt" if isinstance(rec, dict) and "conversations" in rec \
            else None
        raise data_error(path, "expected a record with a 'messages' list", reason="invalid record", record=index,
                         line=line, field="messages", hint=hint)
    if rec.get("label") is False:
        raise data_error(path, "label is false: an undesirable reply (KTO), not SFT data", reason="label false",
                         record=index, line=line, field="label", hint="read the file with format preference_sft")
    msgs, names = openai_messages(path, rec["messages"], index=index, line=line)
    meta = {k: v for k, v in rec.items() if k not in ("messages", "tools")}
    if rec.get("tools"):
        meta["tools"] = parse_tools(path, rec["tools"], index=index, line=line)
    if line is not None:
        meta["line"] = line
    checked = check_conversation(msgs, Loc(str(path), index, line, names), repair=repair, report=report,
                                 need_reply=need_reply)
    return None if checked is None else Example(messages=checked, source=str(path), index=index, meta=meta)


@register_reader("openai_messages")
def read_openai_messages(path: str | Path, *, repair: bool = False, need_reply: bool = True,
                         report: DataReport | None = None) -> list[Example]:
    """Read and validate OpenAI-style conversations (``repair`` as for ShareGPT)."""
    report = report if report is not None else DataReport()
    records = read_json_records(path)
    if records and all(isinstance(r, dict) and "role" in r and "messages" not in r for _, r in records):
        records = [(records[0][0], {"messages": [r for _, r in records]})]
    return collect(path, records, lambda rec, index, line: _example(
        path, rec, index, line, repair=repair, report=report, need_reply=need_reply), repair=repair, report=report)
