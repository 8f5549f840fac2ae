"""FastChat's ShareGPT cleaning for Vicuna (dossier §2.2), one tested function per step.

Each step takes validated :class:`Example` conversations (read with ``sharegpt``; ``repair=True``
applies clean_sharegpt's role repairs: drop a leading non-user turn and a trailing user turn, drop
conversations whose roles still do not alternate) and returns the kept ones, recording in a
:class:`DataReport` what it changed or dropped and why. :func:`clean_sharegpt` runs them in
prepare_all's order: clean_sharegpt -> optional_clean -> split_long_conversation -> filter_wrong_format.
Not here: the hard-coded identity Q&A and the train/test split (done by the recipe's data build).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from herd.core.errors import HerdError
from herd.data.records import Example
from herd.data.report import DataReport, where_example

BLOCKED_WORDS = ("openai", "chatgpt")
RATE_LIMIT_REPLY = "Too many requests in 1 hour. Try again later."

_DIV, _SPAN = re.compile(r"<div.*?>"), re.compile(r"<span.*?>")
_CODE_LANG = re.compile(r"```\s*(.*?)(?:Copy code)+(.+?)\s*?```", re.DOTALL)
_REGENERATE = re.compile(r"\d+ / \d+")
_COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
_COPY_CODE = re.compile(r"```(.*?)Copy code\s*```")
_HTML_TAG = re.compile(r"</?(div|p|span|pre|code|ol|ul|li|br|h[1-6]|table|tr|td|th|strong|em|b|i|a|blockquote)"
                       r"\b[^>]*>", re.IGNORECASE)
_WRONG_INDICES = re.compile(r"\n1\. [^2]*\n1\. ")
_REPEATED_DIGITS = re.compile(r"(\d)\1{8}")


@dataclass(frozen=True)
class CleanOptions:
    """The switches of FastChat's pipeline; defaults are Vicuna's (prepare_all.py)."""

    html: str = "auto"  # "always" (FastChat: every turn is ShareGPT HTML), "never", or "auto": turns with tags
    blocked_words: tuple[str, ...] = BLOCKED_WORDS  # a conversation mentioning one is dropped
    min_chars: int = 16  # conversations shorter than this (all turns together) are dropped
    dedup: bool = True  # by id, then by (first user turn, first assistant turn)
    keep_lang: str | None = None  # optional_clean --keep-lang (ISO 639-1 code)
    skip_lang: str | None = None  # optional_clean --skip-lang; Vicuna used "ko"
    reduce_rep: bool = False  # optional_clean --reduce-rep: drop turns with 9 repeated digits
    wrong_format: bool = True  # filter_wrong_format: drop restarted "1." list numbering
    max_length: int | None = None  # split_long_conversation --max-length (needs template + tokenizer)


def html_to_markdown(text: str) -> str:
    """FastChat's conversion: strip div/span, markdownify, repair "Copy code" fences, drop UI noise."""
    try:
        import markdownify
    except ImportError:
        raise HerdError("HTML to Markdown needs the 'markdownify' package (pip install markdownify)") from None
    text = _SPAN.sub("", _DIV.sub("", text))  # div/span break indentation and underscores in code blocks
    # markdownify 0.11.6 defaults (FastChat's pin): escape * and _, nothing else.
    text = markdownify.markdownify(text, escape_asterisks=True, escape_underscores=True, escape_misc=False).strip()
    text = _CODE_LANG.sub(r"```\g<1>\n\g<2>\n```", text)
    noise = _REGENERATE.search(text)
    if noise and noise.start() == 0:  # the "2 / 2" regenerate counter of the ShareGPT page
        text = text[noise.end():]
    text = _COPY_CODE.sub("", _COPY_CHARS.sub("", text))
    return text.replace("\n\n\n", "\n").strip()


def _with(ex: Example, messages: list[dict], **meta) -> Example:
    return replace(ex, messages=messages, meta={**ex.meta, **meta})


def _keep(examples, report: DataReport, step: str, drop: Callable[[Example], str | None]) -> list[Example]:
    out = []
    for ex in examples:
        reason = drop(ex)
        if reason:
            report.dropped(step, reason, where_example(ex))
        else:
            out.append(ex)
    report.size(step, len(examples), len(out))
    return out


def convert_html(examples: list[Example], mode: str = "auto", *, report: DataReport) -> list[Example]:
    """HTML -> Markdown per turn. ``auto`` converts only turns with HTML tags, since markdownify would
    escape ``_`` and ``*`` in text that is already Markdown."""
    if mode not in ("auto", "always", "never"):
        raise HerdError(f"html must be auto, always or never, not {mode!r}")
    if mode == "never":
        return examples
    out = []
    for ex in examples:
        msgs = [{**m, "content": html_to_markdown(m["content"])}
                if mode == "always" or _HTML_TAG.search(m["content"]) else m for m in ex.messages]
        if msgs != ex.messages:
            report.changed("html", "converted HTML to Markdown", where_example(ex))
            ex = _with(ex, msgs)
        out.append(ex)
    return out


def drop_blocked(examples: list[Example], words=BLOCKED_WORDS, *, report: DataReport) -> list[Example]:
    """Drop conversations naming a blocked word (case-insensitive) or holding a rate-limit reply."""
    def reason(ex: Example) -> str | None:
        for m in ex.messages:
            low = m["content"].lower()
            hit = next((w for w in words if w.lower() in low), None)
            if hit:
                return f"blocked word '{hit}'"
            if m["role"] == "assistant" and m["content"].startswith(RATE_LIMIT_REPLY):
                return "rate-limit reply"
        return None

    return _keep(examples, report, "blocked", reason)


def _blank(text: str) -> bool:
    return not any(ch.isprintable() and not ch.isspace() for ch in text)


def truncate_blank(examples: list[Example], *, report: DataReport) -> list[Example]:
    """Cut a conversation at its first empty or non-printable turn (e.g. emptied by the HTML step), then
    back to its last assistant turn; drop it when no exchange is left."""
    out = []
    for ex in examples:
        cut = next((i for i, m in enumerate(ex.messages) if _blank(m["content"])), None)
        if cut is not None:
            msgs = ex.messages[:cut]
            while msgs and msgs[-1]["role"] != "assistant":
                msgs = msgs[:-1]
            if not any(m["role"] == "assistant" for m in msgs):
                report.dropped("blank", "empty or non-printable turn, no exchange left", where_example(ex))
                continue
            report.changed("blank", "truncated at an empty or non-printable turn", where_example(ex))
            ex = _with(ex, msgs)
        out.append(ex)
    report.size("blank", len(examples), len(out))
    return out


def drop_short(examples: list[Example], min_chars: int = 16, *, report: DataReport) -> list[Example]:
    return _keep(examples, report, "short", lambda ex: f"< {min_chars} characters"
                 if sum(len(m["content"]) for m in ex.messages) < min_chars else None)


def drop_plugins(examples: list[Example], *, report: DataReport) -> list[Example]:
    """ShareGPT conversations that used ChatGPT plugins (a ``plugins`` key or model "Plugins")."""
    return _keep(examples, report, "plugins", lambda ex: "used plugins" if ex.meta.get("plugins")
                 or "plugin" in str(ex.meta.get("model", "")).lower() else None)


def dedup(examples: list[Example], *, report: DataReport) -> list[Example]:
    """Keep the first of each id and of each (first user turn, first assistant turn)."""
    seen: set = set()

    def reason(ex: Example) -> str | None:
        first = {r: next((m["content"] for m in ex.messages if m["role"] == r), None) for r in ("user", "assistant")}
        keys = [("value", first["user"], first["assistant"])]
        if ex.meta.get("id") is not None:
            keys.insert(0, ("id", str(ex.meta["id"])))
        for k in keys:
            if k in seen:
                return f"duplicate {k[0]}"
        seen.update(keys)
        return None

    return _keep(examples, report, "dedup", reason)


def default_language_detector() -> Callable[[str], str]:
    """``langdetect`` (FastChat used polyglot, which needs ICU); pass your own ``detect`` to avoid both."""
    try:
        from langdetect import DetectorFactory, LangDetectException, detect
    except ImportError:
        raise HerdError("language filtering needs a detector: pip install langdetect, or pass detect=") from None
    DetectorFactory.seed = 0  # langdetect is random unless seeded

    def run(text: str) -> str:
        try:
            return detect(text)
        except LangDetectException:
            return "unknown"

    return run


def filter_language(examples: list[Example], *, keep_lang: str | None = None, skip_lang: str | None = None,
                    detect: Callable[[str], str] | None = None, report: DataReport) -> list[Example]:
    """optional_clean: detect the language of all turns joined; keep one language or skip one."""
    if keep_lang is None and skip_lang is None:
        return examples
    if keep_lang is not None and skip_lang is not None:
        raise HerdError("keep_lang and skip_lang are exclusive (as in FastChat's optional_clean)")
    detect = detect or default_language_detector()

    def reason(ex: Example) -> str | None:
        lang = detect("\n".join(m["content"] for m in ex.messages))
        if keep_lang is not None and lang != keep_lang:
            return f"language {lang} (keeping {keep_lang})"
        return f"language {lang}" if lang == skip_lang else None

    return _keep(examples, report, "language", reason)


def drop_repeated_digits(examples: list[Example], *, report: DataReport) -> list[Example]:
    return _keep(examples, report, "repetition", lambda ex: "9 repeated digits"
                 if any(_REPEATED_DIGITS.search(m["content"]) for m in ex.messages) else None)


def drop_wrong_format(examples: list[Example], *, report: DataReport) -> list[Example]:
    """filter_wrong_format: a numbered list that restarts at "1." before reaching 2 (a scrape error)."""
    return _keep(examples, report, "wrong_format", lambda ex: "restarted list numbering"
                 if any(_WRONG_INDICES.search(m["content"]) for m in ex.messages) else None)


def split_long(examples: list[Example], template, tokenizer, max_length: int, *,
               report: DataReport) -> list[Example]:
    """split_long_conversation: chunks of whole exchanges whose render fits ``max_length`` tokens.

    FastChat estimated each turn as its tokens + 6; herd measures the chunk's real render through the
    recipe's template, so a chunk never overflows. The system turn opens every chunk; an exchange too
    long on its own is dropped (FastChat let it overflow and be truncated). Chunk ids are ``{id}_{turn}``.
    """
    out = []
    for ex in examples:
        msgs = ex.messages
        head = msgs[:1] if msgs and msgs[0]["role"] == "system" else []
        starts = [i for i, m in enumerate(msgs) if m["role"] == "user"] + [len(msgs)]
        exchanges = [(starts[k], msgs[starts[k]:starts[k + 1]]) for k in range(len(starts) - 1)]

        def fits(chunk: list[dict], head: list[dict] = head) -> bool:
            return len(template.render(head + chunk, tokenizer).input_ids) <= max_length

        chunks: list[tuple[int, list[dict]]] = []
        for start, exchange in exchanges:
            if chunks and fits(chunks[-1][1] + exchange):
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + exchange)
            elif fits(exchange):
                chunks.append((start, list(exchange)))
            else:
                report.dropped("split", f"one exchange longer than {max_length} tokens", where_example(ex))
                chunks.append((start, []))  # close the current chunk: later turns do not follow this context
        chunks = [(s, c) for s, c in chunks if c]
        if len(chunks) > 1:
            report.changed("split", f"split into {len(chunks)} conversations", where_example(ex))
        if len(chunks) == 1 and head + chunks[0][1] == msgs:
            out.append(ex)
            continue
        base_id = ex.meta.get("id", ex.index)
        for start, chunk in chunks:
            out.append(_with(ex, head + chunk, id=f"{base_id}_{start}", split_from_turn=start))
    report.size("split", len(examples), len(out))
    return out


def clean_sharegpt(examples: list[Example], options: CleanOptions = CleanOptions(), *, template=None,
                   tokenizer=None, detect: Callable[[str], str] | None = None,
                   report: DataReport | None = None) -> list[Example]:
    """The whole pipeline in FastChat's order; returns the kept (and split) conversations."""
    report = report if report is not None else DataReport()
    if options.max_length is not None and (template is None or tokenizer is None):
        raise HerdError("splitting long conversations (max_length) needs the recipe's template and tokenizer")
    exs = convert_html(examples, options.html, report=report)
    exs = drop_blocked(exs, options.blocked_words, report=report)
    exs = truncate_blank(exs, report=report)
    exs = drop_short(exs, options.min_chars, report=report)
    exs = drop_plugins(exs, report=report)
    if options.dedup:
        exs = dedup(exs, report=report)
    exs = filter_language(exs, keep_lang=options.keep_lang, skip_lang=options.skip_lang, detect=detect,
                          report=report)
    if options.reduce_rep:
        exs = drop_repeated_digits(exs, report=report)
    if options.max_length is not None:
        exs = split_long(exs, template, tokenizer, options.max_length, report=report)
    if options.wrong_format:
        exs = drop_wrong_format(exs, report=report)
    return exs
