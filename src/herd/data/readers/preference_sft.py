"""Preference records whose chosen reply serves as SFT data (Llama-2-Chat SFT/RS, DPO warm starts).

One parser, :func:`parse_pair`, reads every supported preference format into a
:class:`PreferencePair` (prompt conversation, chosen reply, rejected reply); the ``preference_sft``
reader keeps prompt + chosen. Formats, recognised per record by their keys:
- LLaMA-Factory ShareGPT DPO: ``conversations`` + ``chosen``/``rejected`` turns (``{"from", "value"}``);
- TRL: ``prompt`` + ``chosen`` + ``rejected``, each a string or a list of OpenAI messages;
- LLaMA-Factory Alpaca DPO: ``instruction`` (+ ``input``) + ``chosen``/``rejected`` strings;
- Anthropic HH-RLHF: ``chosen``/``rejected`` transcripts (``\\n\\nHuman: ...\\n\\nAssistant: ...``);
- Stack Exchange paired: ``question`` + ``response_j`` (preferred) + ``response_k``;
- KTO: ``messages`` + ``label``; label true keeps the last assistant turn as chosen, label false has no
  chosen reply and is dropped by the SFT reader (counted as "undesirable reply (KTO)").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from herd.data.conversation import Loc, check_conversation, collect, data_error
from herd.data.messages import openai_messages, sharegpt_messages
from herd.data.records import Example, read_json_records, register_reader, require_str
from herd.data.report import DataReport, where

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


@dataclass
class PreferencePair:
    """A prompt conversation (ends with a user turn) and its chosen and rejected assistant replies."""

    prompt: list[dict]
    chosen: dict | None  # None: a KTO record labelled undesirable
    rejected: dict | None
    names: list[str] = field(default_factory=list)  # field name of each prompt turn + the chosen reply
    meta: dict = field(default_factory=dict)
    keys: tuple[str, str] = ("role", "content")  # how the file names a turn's role and text ("" = no key)


def parse_hh(path, text, *, index: int, line: int | None, field_name: str) -> list[dict]:
    """An HH-RLHF transcript into messages; the text before the first ``Human:`` must be blank."""
    if not isinstance(text, str):
        raise data_error(path, f"expected a string, got {type(text).__name__}", reason="invalid record",
                         record=index, line=line, field=field_name)
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise data_error(path, "expected a transcript of '\\n\\nHuman: ...\\n\\nAssistant: ...' turns",
                         reason="invalid transcript", record=index, line=line, field=field_name)
    return [{"role": "user" if who == "Human" else "assistant", "content": body}
            for who, body in zip(parts[1::2], parts[2::2], strict=True)]


def _reply(path, value, *, index: int, line: int | None, field_name: str, sharegpt: bool) -> dict:
    """A chosen/rejected reply: a string, a ShareGPT turn, or a list of OpenAI messages (last one)."""
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if sharegpt and isinstance(value, dict):
        return sharegpt_messages(path, [value], index=index, line=line, key=field_name)[0][0]
    if isinstance(value, list) and value:
        return openai_messages(path, value, index=index, line=line, key=field_name)[0][-1]
    raise data_error(path, "expected a reply (string, turn or message list)", reason="invalid record",
                     record=index, line=line, field=field_name)


def parse_pair(path, rec, index: int, line: int | None, *, with_rejected: bool = True) -> PreferencePair:
    """Any supported preference record -> :class:`PreferencePair` (roles checked by the caller).
    ``with_rejected=False`` skips the rejected reply (SFT needs only the chosen one)."""
    kw = {"index": index, "line": line}
    if not with_rejected and isinstance(rec, dict):
        rec = {k: v for k, v in rec.items() if k not in ("rejected", "response_k")}
    if not isinstance(rec, dict):
        raise data_error(path, f"expected a record object, got {type(rec).__name__}", reason="invalid record",
                         record=index, line=line)
    meta = {k: v for k, v in rec.items()
            if k not in ("conversations", "messages", "prompt", "chosen", "rejected", "instruction", "input",
                         "question", "response_j", "response_k")}
    if "conversations" in rec and "chosen" in rec:
        prompt, names = sharegpt_messages(path, rec["conversations"], **kw)
        if isinstance(rec.get("system"), str) and rec["system"]:
            prompt, names = [{"role": "system", "content": rec["system"]}, *prompt], ["system", *names]
        meta.pop("system", None)
        chosen = _reply(path, rec["chosen"], field_name="chosen", sharegpt=True, **kw)
        rejected = _reply(path, rec["rejected"], field_name="rejected", sharegpt=True, **kw) \
            if "rejected" in rec else None
        return PreferencePair(prompt, chosen, rejected, [*names, "chosen"], meta, ("from", "value"))
    if "messages" in rec and "label" in rec:
        msgs, names = openai_messages(path, rec["messages"], **kw)
        if not isinstance(rec["label"], bool):
            raise data_error(path, "expected true or false", reason="invalid record", field="label", **_rl(kw))
        if not msgs or msgs[-1]["role"] != "assistant":
            raise data_error(path, "a KTO record must end with the assistant turn it labels",
                             reason="no assistant reply", field="messages", **_rl(kw))
        chosen, rejected = (msgs[-1], None) if rec["label"] else (None, msgs[-1])
        return PreferencePair(msgs[:-1], chosen, rejected, names, meta)
    if "prompt" in rec and "chosen" in rec:
        if isinstance(rec["prompt"], str):
            prompt, names = [{"role": "user", "content": require_str(path, rec, "prompt", **kw)}], ["prompt"]
        else:
            prompt, names = openai_messages(path, rec["prompt"], key="prompt", **kw)
        chosen = _reply(path, rec["chosen"], field_name="chosen", sharegpt=False, **kw)
        rejected = _reply(path, rec["rejected"], field_name="rejected", sharegpt=False, **kw) \
            if "rejected" in rec else None
        return PreferencePair(prompt, chosen, rejected, [*names, "chosen"], meta)
    if "instruction" in rec and "chosen" in rec:
        user = {"role": "user", "content": require_str(path, rec, "instruction", **kw)}
        context = require_str(path, rec, "input", allow_empty=True, optional=True, **kw)
        if context.strip():
            user["input"] = context
        chosen = {"role": "assistant", "content": require_str(path, rec, "chosen", **kw)}
        rejected = {"role": "assistant", "content": require_str(path, rec, "rejected", **kw)} \
            if "rejected" in rec else None
        return PreferencePair([user], chosen, rejected, ["instruction", "chosen"], meta, ("", ""))
    if "chosen" in rec and isinstance(rec["chosen"], str):
        chosen_msgs = parse_hh(path, rec["chosen"], field_name="chosen", **kw)
        rejected = None
        if "rejected" in rec:
            rejected_msgs = parse_hh(path, rec["rejected"], field_name="rejected", **kw)
            if rejected_msgs[:-1] != chosen_msgs[:-1]:
                raise data_error(path, "chosen and rejected transcripts differ before their final reply",
                                 reason="prompts differ", field="rejected", **_rl(kw))
            rejected = rejected_msgs[-1]
        names = [f"chosen (turn {t})" for t in range(len(chosen_msgs))]
        return PreferencePair(chosen_msgs[:-1], chosen_msgs[-1], rejected, names, meta, ("", ""))
    if "question" in rec and "response_j" in rec:
        user = {"role": "user", "content": require_str(path, rec, "question", **kw)}
        chosen = {"role": "assistant", "content": require_str(path, rec, "response_j", **kw)}
        rejected = {"role": "assistant", "content": require_str(path, rec, "response_k", **kw)} \
            if "response_k" in rec else None
        return PreferencePair([user], chosen, rejected, ["question", "response_j"], meta, ("", ""))
    raise data_error(path, "not a known preference format (keys: " + ", ".join(sorted(rec)) + ")",
                     reason="unknown format", record=index, line=line,
                     hint="expected conversations+chosen, prompt+chosen, instruction+chosen, HH chosen/rejected "
                          "transcripts, question+response_j, or messages+label")


def _rl(kw: dict) -> dict:
    return {"record": kw["index"], "line": kw["line"]}


def _example(path, rec, index: int, line: int | None, *, repair: bool, report: DataReport) -> Example | None:
    pair = parse_pair(path, rec, index, line, with_rejected=False)
    if pair.chosen is None:
        report.dropped("read", "undesirable reply (KTO label false)", where(path, index, line))
        return None
    loc = Loc(str(path), index, line, pair.names, *pair.keys)
    msgs = check_conversation([*pair.prompt, pair.chosen], loc, repair=repair, report=report)
    if msgs is None:
        return None
    if msgs[-1] is not pair.chosen:  # a repair cut the chosen reply off: nothing of the pair is left to train
        report.dropped("read", "chosen reply removed by repair", loc.place)
        return None
    meta = dict(pair.meta)
    if line is not None:
        meta["line"] = line
    return Example(messages=msgs, source=str(path), index=index, meta=meta)


@register_reader("preference_sft")
def read_preference_sft(path: str | Path, *, repair: bool = False, report: DataReport | None = None
                        ) -> list[Example]:
    """Prompt + chosen reply of every preference record, validated as a conversation (``repair`` as for
    ShareGPT). A repair that cuts the chosen reply off (e.g. an empty chosen) drops the record."""
    report = report if report is not None else DataReport()
    records = read_json_records(path)
    return collect(path, records, lambda rec, index, line: _example(path, rec, index, line, repair=repair,
                                                                    report=report), repair=repair, report=report)
