"""The structural rules of a training conversation, and the documented repairs.

A conversation in herd's neutral form is an optional ``system`` turn first, then exchanges: a ``user``
turn answered by an ``assistant`` turn; an assistant turn that calls tools (``tool_calls``) is followed
by one or more ``tool`` turns and another assistant turn. It ends with an assistant turn (what is
trained), unless the caller reads prompts (``need_reply=False``). Every turn has non-empty text.

Strict (the default) raises a DataError naming file, record, line and the turn's field. With
``repair=True`` the repairs of FastChat's clean_sharegpt are applied and counted in the report:
truncate at the first empty turn, drop turns before the first user turn, drop turns after the last
assistant turn. A record that still breaks a rule (unknown role, roles out of order, nothing left to
train on) is dropped and counted with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.core.errors import DataError
from herd.data.report import DataReport, where

ROLES = ("system", "user", "assistant", "tool")


def data_error(path, message: str, *, reason: str, record=None, line=None, field=None, hint=None) -> DataError:
    """A DataError carrying a short, stable ``reason`` (the key under which repair mode counts drops)."""
    err = DataError(str(path), message, record=record, line=line, field=field, hint=hint)
    err.reason = reason
    return err


def reason_of(err: DataError) -> str:
    return getattr(err, "reason", "invalid record")


@dataclass
class Loc:
    """Where a conversation came from, and how its turns are named in the file (for error messages)."""

    path: str
    index: int
    line: int | None
    turns: list[str] = field(default_factory=list)  # e.g. "conversations[2]", one per message
    role_key: str = "role"
    content_key: str = "content"

    def error(self, reason: str, message: str, turn: int | None = None, key: str | None = None,
              hint: str | None = None) -> DataError:
        name = None
        if turn is not None:
            name = self.turns[turn] if turn < len(self.turns) else f"turn {turn}"
            if key:
                name += f".{key}"
        return data_error(self.path, message, reason=reason, record=self.index, line=self.line, field=name,
                          hint=hint)

    @property
    def place(self) -> str:
        return where(self.path, self.index, self.line)


def _empty(m: dict) -> bool:
    return not m["content"].strip() and not (m["role"] == "assistant" and m.get("tool_calls"))


def check_conversation(messages: list[dict], loc: Loc, *, repair: bool = False, report: DataReport | None = None,
                       step: str = "read", need_reply: bool = True) -> list[dict] | None:
    """The conversation if valid (repaired when ``repair``), else a DataError; ``None`` = dropped (repair)."""
    report = report if report is not None else DataReport()
    try:
        return _check(list(messages), loc, repair, report, step, need_reply)
    except DataError as e:
        if not repair:
            raise
        report.dropped(step, reason_of(e), str(e))
        return None


def _allowed(prev: dict | None) -> tuple[str, ...]:
    if prev is None:
        return ("user",)
    if prev["role"] == "assistant":
        return ("tool",) if prev.get("tool_calls") else ("user",)
    return {"user": ("assistant",), "tool": ("tool", "assistant")}[prev["role"]]


def _check(msgs: list[dict], loc: Loc, repair: bool, report: DataReport, step: str,
           need_reply: bool) -> list[dict]:
    rk, ck = loc.role_key, loc.content_key
    pos = list(range(len(msgs)))  # original turn numbers, so errors after a repair still name the field
    for i, m in enumerate(msgs):
        if m["role"] not in ROLES:
            raise loc.error("unknown role", f"unknown role {m['role']!r}", i, rk)
        if m["role"] == "system" and i != 0:
            raise loc.error("system turn not first", "a system turn may only come first", i, rk)
    for i, m in enumerate(msgs):
        if _empty(m):
            if not repair:
                raise loc.error("empty turn", "empty turn", i, ck, hint="fill or remove it, or read with repair")
            msgs, pos = msgs[:i], pos[:i]
            report.changed(step, "truncated at the first empty turn", loc.place)
            break
    head = 1 if msgs and msgs[0]["role"] == "system" else 0
    first_user = next((i for i in range(head, len(msgs)) if msgs[i]["role"] == "user"), None)
    if first_user is None:
        raise loc.error("no user turn", "no user turn")
    if first_user != head:
        if not repair:
            raise loc.error("roles out of order", "the conversation must open with a user turn (after an "
                            f"optional system turn), found {msgs[head]['role']!r}", pos[head], rk,
                            hint="or read with repair")
        del msgs[head:first_user], pos[head:first_user]
        report.changed(step, "dropped turns before the first user turn", loc.place)
    if need_reply:
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise loc.error("no assistant reply", "no assistant reply to train on")
        if last != len(msgs) - 1:
            if not repair:
                raise loc.error("ends without a reply", f"the conversation ends with a {msgs[-1]['role']!r} "
                                "turn after the last assistant reply (it would not be trained)", pos[-1], rk,
                                hint="remove it, or read with repair")
            msgs, pos = msgs[:last + 1], pos[:last + 1]
            report.changed(step, "dropped turns after the last assistant reply", loc.place)
    prev = None
    for i in range(head, len(msgs)):
        if msgs[i]["role"] not in _allowed(prev):
            after = repr(prev["role"]) if prev else "the start"
            raise loc.error("roles out of order", f"{msgs[i]['role']!r} turn after {after}", pos[i], rk)
        prev = msgs[i]
    return msgs


def collect(path, records: list[tuple[int | None, object]], parse, *, repair: bool, report: DataReport,
            step: str = "read") -> list:
    """Run ``parse(rec, index, line)`` over a file's records: strict stops at the first DataError, repair
    drops the record and counts it. ``parse`` may return None (already counted) or a list (several)."""
    out = []
    for index, (line, rec) in enumerate(records):
        try:
            got = parse(rec, index, line)
        except DataError as e:
            if not repair:
                raise
            report.dropped(step, reason_of(e), str(e))
            continue
        if isinstance(got, list):
            out.extend(got)
        elif got is not None:
            out.append(got)
    report.size(step, len(records), len(out))
    if not out:
        raise DataError(str(path), "no usable records", hint=f"data report: {report}")
    return out
