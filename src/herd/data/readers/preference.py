"""Preference data for alignment stages: pairs (reward model, DPO) and labelled single replies (KTO).

Every reader returns records in herd's neutral message form, so any template can render them:
- :class:`PreferencePair`: the prompt turns (ending with a user turn), a chosen and a rejected reply,
  and optionally the annotator's degree of preference (Llama 2's four rating levels, §5.2 step 2) or a
  numeric margin;
- :class:`LabeledReply`: a prompt and one reply labelled desirable or undesirable (KTO files).

Formats (``format=`` of a recipe data source):
- ``sharegpt_preference``: LLaMA-Factory DPO, ``conversations`` + ``chosen``/``rejected`` turns;
- ``hh_rlhf``: Anthropic HH-RLHF, two full ``\\n\\nHuman: …\\n\\nAssistant: …`` transcripts that must share
  every turn but the final reply (a pair whose earlier turns differ is refused: it is not a comparison of
  two replies to one prompt);
- ``stack_exchange_paired``: ``question`` + ``response_j`` (preferred) + ``response_k``;
- ``preference``: any of the above or TRL's ``prompt``/``chosen``/``rejected``, recognised per record;
- ``kto``: ``messages`` + boolean ``label`` (:func:`read_labeled`).
Parsing of the individual formats is shared with the ``preference_sft`` reader
(:func:`herd.data.readers.preference_sft.parse_pair`); this module adds the pair checks alignment needs.

Strict reading (the default) stops at the first bad record with a DataError naming file, line/record and
field; ``repair=True`` drops bad records and counts each reason in the :class:`DataReport` (HH-RLHF's
harmless-base test split has 13 such records of 2,312: empty final replies, transcripts
whose earlier turns differ, two Assistant turns in a row).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from herd.core.errors import ConfigError, DataError
from herd.data.conversation import Loc, check_conversation, collect, data_error
from herd.data.readers.preference_sft import parse_pair
from herd.data.records import read_json_records
from herd.data.report import DataReport, where

# Llama 2's rating levels, strongest first (§5.2 step 2); "unsure" is the same level as "negligibly better".
RATING_LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
_RATING_ALIASES = {"unsure": "negligibly_better", "negligibly_better_unsure": "negligibly_better"}

# Which keys a record of each explicit format must have (checked before parsing, for clear errors).
_FORMAT_KEYS = {
    "sharegpt_preference": ("conversations", "chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "stack_exchange_paired": ("question", "response_j", "response_k"),
    "preference": (),
}
PAIR_FORMATS = tuple(_FORMAT_KEYS)
LABELED_FORMATS = ("kto",)
READER_OPTIONS = {"repair", "safety"}  # what a data source's ``options`` may set


@dataclass
class PreferencePair:
    """One comparison: two assistant replies to the same prompt, ``chosen`` preferred by the annotator."""

    prompt: list[dict]
    chosen: str
    rejected: str
    source: str
    index: int
    line: int | None = None
    rating: str | None = None  # one of RATING_LEVELS, when the data says how much better
    margin: float | None = None  # an explicit margin (overrides the rating's)
    meta: dict = field(default_factory=dict)
    # a side that is the beginning of a reply (a sample cut at a token cap): rendered without an end of
    # turn, as a message marked "open" (herd.templates.base)
    chosen_open: bool = False
    rejected_open: bool = False

    def key(self) -> str:
        """A stable content key (deterministic splits, dedup); independent of file and position."""
        opened = [[self.chosen_open, self.rejected_open]] if self.chosen_open or self.rejected_open else []
        return json.dumps([self.prompt, self.chosen, self.rejected, *opened], sort_keys=True, ensure_ascii=False)

    @property
    def where(self) -> str:
        return where(self.source, self.index, self.line)


@dataclass
class LabeledReply:
    """A prompt and one reply with a binary desirable/undesirable label (KTO-style feedback)."""

    prompt: list[dict]
    reply: str
    desirable: bool
    source: str
    index: int
    line: int | None = None
    meta: dict = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps([self.prompt, self.reply, self.desirable], sort_keys=True, ensure_ascii=False)


def normalise_rating(value: object) -> str | None:
    """A rating as one of :data:`RATING_LEVELS` (case, spaces and hyphens ignored), or None if unknown."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower().replace("-", "_").replace(" ", "_").replace("/", "_")
    v = _RATING_ALIASES.get(v, v)
    return v if v in RATING_LEVELS else None


def _renamed(rec: object, columns: dict[str, str] | None) -> object:
    """Rename the file's columns to the canonical ones (``columns`` maps canonical → file name)."""
    if not columns or not isinstance(rec, dict):
        return rec
    back = {v: k for k, v in columns.items()}
    return {back.get(k, k): v for k, v in rec.items()}


def _check_keys(path, rec: object, fmt: str, index: int, line: int | None) -> None:
    if not isinstance(rec, dict):
        raise data_error(path, f"expected a record object, got {type(rec).__name__}", reason="invalid record",
                         record=index, line=line)
    for k in _FORMAT_KEYS[fmt]:
        if k not in rec:
            raise data_error(path, f"missing field (format {fmt} needs {', '.join(_FORMAT_KEYS[fmt])})",
                             reason="missing field", record=index, line=line, field=k)


def _reply_text(path, reply: dict | None, field_name: str, index: int, line: int | None) -> str:
    if reply is None:
        raise data_error(path, "missing field", reason="missing field", record=index, line=line, field=field_name)
    if reply.get("role") != "assistant":
        raise data_error(path, f"expected an assistant reply, got role {reply.get('role')!r}",
                         reason="reply is not an assistant turn", record=index, line=line, field=field_name)
    text = reply.get("content")
    if not isinstance(text, str) or not text.strip():
        raise data_error(path, "empty reply", reason="empty reply", record=index, line=line, field=field_name)
    return text


def _strength(path, rec: dict, index: int, line: int | None) -> tuple[str | None, float | None]:
    rating = margin = None
    if rec.get("rating") is not None:
        rating = normalise_rating(rec["rating"])
        if rating is None:
            raise data_error(path, f"unknown rating {rec['rating']!r} (known: {', '.join(RATING_LEVELS)}, unsure)",
                             reason="unknown rating", record=index, line=line, field="rating")
    if rec.get("margin") is not None:
        m = rec["margin"]
        if isinstance(m, bool) or not isinstance(m, int | float) or m < 0:
            raise data_error(path, "expected a number >= 0", reason="invalid margin", record=index, line=line,
                             field="margin")
        margin = float(m)
    return rating, margin


def parse_preference(path, rec: object, index: int, line: int | None, fmt: str = "preference") -> PreferencePair:
    """One record → :class:`PreferencePair`, or a DataError naming the record and field."""
    if fmt not in _FORMAT_KEYS:
        raise DataError(str(path), f"unknown preference format '{fmt}'; known: {', '.join(PAIR_FORMATS)}")
    _check_keys(path, rec, fmt, index, line)
    assert isinstance(rec, dict)
    if fmt == "hh_rlhf" and not isinstance(rec.get("chosen"), str):
        raise data_error(path, f"expected a transcript string, got {type(rec['chosen']).__name__}",
                         reason="invalid record", record=index, line=line, field="chosen")
    if "label" in rec and "messages" in rec:
        raise data_error(path, "a KTO record (one labelled reply), not a preference pair", reason="kto record",
                         record=index, line=line, field="label", hint="read the file with format kto")
    raw = parse_pair(path, rec, index, line)
    chosen = _reply_text(path, raw.chosen, "chosen" if "chosen" in rec else "response_j", index, line)
    rejected = _reply_text(path, raw.rejected, "rejected" if "chosen" in rec else "response_k", index, line)
    loc = Loc(str(path), index, line, raw.names, *raw.keys)
    check_conversation([*raw.prompt, raw.chosen], loc)  # strict: roles in order, no empty turn
    if raw.prompt[-1]["role"] != "user":
        raise loc.error("prompt does not end with a user turn",
                        f"the prompt ends with a {raw.prompt[-1]['role']!r} turn, not a user turn",
                        len(raw.prompt) - 1, loc.role_key or None)
    if chosen.strip() == rejected.strip():
        raise data_error(path, "chosen and rejected replies are identical", reason="identical replies",
                         record=index, line=line, field="rejected")
    rating, margin = _strength(path, rec, index, line)
    meta = {k: v for k, v in raw.meta.items() if k not in ("rating", "margin")}
    return PreferencePair(prompt=raw.prompt, chosen=chosen, rejected=rejected, source=str(path), index=index,
                          line=line, rating=rating, margin=margin, meta=meta)


def read_pairs(path: str | Path, fmt: str = "preference", *, repair: bool = False,
               report: DataReport | None = None, columns: dict[str, str] | None = None,
               safety: bool = False) -> list[PreferencePair]:
    """Read and validate a preference file. ``repair`` drops (and counts) bad records instead of stopping;
    ``safety`` marks every pair's prompt as a safety prompt (``meta["safety"]``, for Llama 2's reward
    combination)."""
    report = report if report is not None else DataReport()
    records = read_json_records(path)

    def parse(rec, index, line):
        pair = parse_preference(path, _renamed(rec, columns), index, line, fmt)
        if safety:
            pair.meta["safety"] = True
        return pair

    return collect(path, records, parse, repair=repair, report=report)


def parse_labeled(path, rec: object, index: int, line: int | None) -> LabeledReply:
    """A KTO record (``messages`` ending with the labelled assistant turn + boolean ``label``)."""
    if not isinstance(rec, dict) or "messages" not in rec or "label" not in rec:
        missing = "messages" if not isinstance(rec, dict) or "messages" not in rec else "label"
        raise data_error(path, "missing field (format kto needs messages, label)", reason="missing field",
                         record=index, line=line, field=missing)
    raw = parse_pair(path, rec, index, line)
    reply = raw.chosen if raw.chosen is not None else raw.rejected
    text = _reply_text(path, reply, f"messages[{len(raw.prompt)}]", index, line)
    loc = Loc(str(path), index, line, raw.names, *raw.keys)
    check_conversation([*raw.prompt, reply], loc)
    return LabeledReply(prompt=raw.prompt, reply=text, desirable=raw.chosen is not None, source=str(path),
                        index=index, line=line, meta=dict(raw.meta))


def read_labeled(path: str | Path, fmt: str = "kto", *, repair: bool = False, report: DataReport | None = None,
                 columns: dict[str, str] | None = None, safety: bool = False) -> list[LabeledReply]:
    """Read and validate a KTO-style file of labelled single replies (options as for :func:`read_pairs`)."""
    if fmt not in LABELED_FORMATS:
        raise DataError(str(path), f"unknown labelled-reply format '{fmt}'; known: {', '.join(LABELED_FORMATS)}")
    report = report if report is not None else DataReport()
    records = read_json_records(path)

    def parse(rec, index, line):
        item = parse_labeled(path, _renamed(rec, columns), index, line)
        if safety:
            item.meta["safety"] = True
        return item

    return collect(path, records, parse, repair=repair, report=report)


# -- held-out split and dedup ---------------------------------------------------------------------

def _rank(item: PreferencePair | LabeledReply, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{item.key()}".encode()).hexdigest()


def split_items(items: list, eval_size: int, seed: int = 42) -> tuple[list, list]:
    """Deterministic held-out split by content hash (herd.data.split's rule): a pair's side depends on
    its content and the seed only, so it does not move when files are reordered or grow."""
    if eval_size <= 0:
        return list(items), []
    if eval_size >= len(items):
        raise ConfigError(f"eval_size {eval_size} leaves no training records (have {len(items)})")
    chosen = set(sorted(range(len(items)), key=lambda i: _rank(items[i], seed))[:eval_size])
    return ([x for i, x in enumerate(items) if i not in chosen], [x for i, x in enumerate(items) if i in chosen])


def split_by_prompt(items: list, eval_size: int, seed: int = 42) -> tuple[list, list]:
    """Held-out split in which all records of one prompt fall on the same side (no prompt leaks into
    both); ``eval_size`` counts prompts."""
    if eval_size <= 0:
        return list(items), []
    prompts = sorted({json.dumps(x.prompt, sort_keys=True, ensure_ascii=False) for x in items})
    if eval_size >= len(prompts):
        raise ConfigError(f"eval_size {eval_size} leaves no training prompts (have {len(prompts)})")
    rank = sorted(prompts, key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
    held = set(rank[:eval_size])
    train = [x for x in items if json.dumps(x.prompt, sort_keys=True, ensure_ascii=False) not in held]
    evals = [x for x in items if json.dumps(x.prompt, sort_keys=True, ensure_ascii=False) in held]
    return train, evals


def dedupe_items(items: list) -> tuple[list, int]:
    """Drop exact duplicates (keeps the first): :func:`herd.data.split.dedupe`, which keys on ``.key()``."""
    from herd.data.split import dedupe

    return dedupe(items)


# -- a stage's data sources -----------------------------------------------------------------------

def load_sources(sources: list, *, relative_to: Path | None = None, report: DataReport | None = None
                 ) -> tuple[list[PreferencePair | LabeledReply], list[dict]]:
    """Read a stage's ``data:`` list (``herd.core.recipe.DataSource``s). Returns the records and, per file, the
    lineage record (name, path, sha256, records) that ``herd derive`` stores for SFT data."""
    from herd.core.hashing import sha256_file
    from herd.core.paths import resolve_data_path

    report = report if report is not None else DataReport()
    out: list = []
    records: list[dict] = []
    for src in sources:
        path = resolve_data_path(src.path, relative_to)
        if not path.exists():
            raise DataError(str(path), f"data '{src.name}': file not found"
                            + (" (set HERD_DATA to the shared datasets folder)" if src.path.startswith("shared:")
                               else ""))
        opts = dict(src.options)
        unknown = sorted(set(opts) - READER_OPTIONS)
        if unknown:
            raise DataError(str(path), f"data '{src.name}': unknown option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(sorted(READER_OPTIONS))})")
        if src.columns:
            opts["columns"] = src.columns
        if src.format in LABELED_FORMATS:
            items: list = read_labeled(path, src.format, report=report, **opts)
        elif src.format in PAIR_FORMATS:
            items = read_pairs(path, src.format, report=report, **opts)
        else:
            raise DataError(str(path), f"data '{src.name}': format '{src.format}' is not a preference format "
                            f"(known: {', '.join(PAIR_FORMATS + LABELED_FORMATS)})")
        if src.max_records:
            items = items[: src.max_records]
        out += items
        records.append({"name": src.name, "path": str(path), "sha256": sha256_file(path), "records": len(items)})
    return out, records
