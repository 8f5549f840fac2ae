"""The two message shapes herd reads, parsed into neutral messages: ShareGPT turns (FastChat,
LLaMA-Factory) and OpenAI chat messages. Shared by the ShareGPT, OpenAI-messages and preference readers
(a reader never imports another reader)."""

from __future__ import annotations

import json

from herd.core.errors import DataError
from herd.data.conversation import data_error

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
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
        role = SHAREGPT_ROLES.get(raw, raw) if isinstance(raw, str) else repr(raw)
        msg = {"role": role, "content": value}
        if raw == "function_call":
            msg["tool_calls"] = [tool_call(path, value, index=index, line=line, field=f"{name}.value")]
        msgs.append(msg)
        names.append(name)
    return msgs, names


OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _content(path, value, *, index: int, line: int | None, field: str) -> str:
    def bad(message: str) -> DataError:
        return data_error(path, message, reason="invalid record", record=index, line=line, field=field)

    if isinstance(value, list):
        parts = []
        for p in value:
            if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
                raise bad("only text content parts are supported")
            parts.append(p["text"])
        value = "".join(parts)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise bad(f"expected a string or a list of text parts, got {type(value).__name__}")
    if "\x00" in value or "\ue000" in value or "\ue001" in value:
        raise bad("contains a NUL or reserved private-use character")
    return value


def _calls_text(calls: list[dict]) -> str:
    out = []
    for c in calls:
        fn = c.get("function", c)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        out.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
    return "\n".join(out)


def openai_messages(path, messages, *, index: int, line: int | None, key: str = "messages"
                    ) -> tuple[list[dict], list[str]]:
    """OpenAI messages -> neutral messages and each message's field name."""
    if not isinstance(messages, list):
        raise data_error(path, f"expected a list of messages, got {type(messages).__name__}",
                         reason="invalid record", record=index, line=line, field=key)
    msgs, names = [], []
    for t, m in enumerate(messages):
        name = f"{key}[{t}]"
        if not isinstance(m, dict) or "role" not in m:
            hint = "this looks like ShareGPT: use format sharegpt" if isinstance(m, dict) and "from" in m else None
            raise data_error(path, "expected a message object with a role", reason="invalid record", record=index,
                             line=line, field=name, hint=hint)
        msg = {k: v for k, v in m.items() if k not in ("role", "content")}
        raw = m["role"]
        msg["role"] = OPENAI_ROLES.get(raw, raw) if isinstance(raw, str) else repr(raw)
        msg["content"] = _content(path, m.get("content"), index=index, line=line, field=f"{name}.content")
        calls = m.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise data_error(path, "expected a list of tool calls", reason="invalid function call",
                                 record=index, line=line, field=f"{name}.tool_calls")
            if not msg["content"].strip():
                msg["content"] = _calls_text(calls)
        msgs.append(msg)
        names.append(name)
    return msgs, names
