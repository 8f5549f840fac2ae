"""ShareGPT conversations: FastChat's and LLaMA-Factory's ``{"conversations": [{"from", "value"}]}``.

Accepted: a JSON array or JSON Lines of records, one record object, or one bare conversation (a list
of turns). Roles: ``human``/``user`` -> user, ``gpt``/``assistant`` -> assistant, ``system``,
``observation``/``tool`` -> tool, and LLaMA-Factory's ``function_call`` -> an assistant turn whose
content is the call's JSON and whose ``tool_calls`` hold it parsed (OpenAI shape). LLaMA-Factory's
top-level ``system`` string becomes the system turn and ``tools`` (a JSON string) goes to
``meta["tools"]``; other top-level keys (``id``, ``model``, ...) go to ``meta`` as they are.
"""

from __future__ import annotations

from pathlib import Path

from herd.data.conversation import Loc, check_conversation, collect, data_error
from herd.data.messages import parse_tools, sharegpt_messages
from herd.data.records import Example, read_json_records, register_reader
from herd.data.report import DataReport


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

