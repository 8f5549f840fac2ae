"""One template definition for training, evaluation, serving and export.

A template is a jinja chat template (the same dialect as HF's ``chat_template``) in which the text the
model is trained on sits inside ``{% generation %}…{% endgeneration %}`` blocks, the convention
transformers uses for ``return_assistant_tokens_mask``. From that single string herd derives
- the training render: token ids plus a loss mask that is 1 exactly on generation-block tokens;
- the generation prompt for evaluation, chat and serving (``add_generation_prompt=True``);
- the ``chat_template`` written into exported tokenizers (HF keeps generation tags; exporters that
  need plain jinja call :meth:`Template.plain_jinja`).
Tests prove the training render equals ``tokenizer.apply_chat_template`` token for token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herd.core.errors import HerdError

IGNORE_INDEX = -100
_GEN_START, _GEN_END = "\ue000", "\ue001"  # private-use code points; records containing them are refused
_GEN_TAG = re.compile(r"{%-?\s*(end)?generation\s*-?%}")
_MARKER = re.compile(f"[{_GEN_START}{_GEN_END}]")


class TemplateError(HerdError):
    """A conversation cannot be rendered by a template (wrong roles, forbidden characters)."""


def _raise(message: str):
    raise TemplateError(message)


@lru_cache(maxsize=64)
def _compile(source: str):
    # Same settings as transformers' chat-template environment, so renders agree byte for byte.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


@dataclass
class Rendered:
    """A rendered conversation: the text, its token ids and per-token labels (-100 = not trained)."""

    text: str
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


@dataclass(frozen=True)
class Template:
    """A prompt/chat format. ``jinja`` is the single definition; ``stop`` lists extra stop strings."""

    name: str
    jinja: str
    description: str
    source: str
    stop: tuple[str, ...] = ()
    uses_bos: bool = True  # prefix bos_token when the tokenizer would add one by default
    roles: tuple[str, ...] = ("system", "user", "assistant")
    extra: dict = field(default_factory=dict)

    # -- the one definition, specialised for a tokenizer ------------------------------------------
    def chat_template(self, tokenizer=None) -> str:
        """The jinja for this tokenizer (with generation tags), as exported into ``tokenizer_config``."""
        if self.uses_bos and tokenizer is not None and _adds_bos(tokenizer):
            return "{{ bos_token }}" + self.jinja
        return self.jinja

    def plain_jinja(self, tokenizer=None) -> str:
        """The chat template without generation tags, for renderers that do not know them."""
        return _GEN_TAG.sub("", self.chat_template(tokenizer))

    # -- rendering ---------------------------------------------------------------------------------
    def render_text(self, messages: list[dict], tokenizer=None, *, add_generation_prompt: bool = False,
                    **kwargs) -> tuple[str, list[tuple[int, int]]]:
        """Render to text; returns the text and the character spans of generation blocks."""
        return self.text_renderer(tokenizer, add_generation_prompt=add_generation_prompt, **kwargs)(messages)

    def text_renderer(self, tokenizer=None, *, add_generation_prompt: bool = False, **kwargs
                      ) -> Callable[[list[dict]], tuple[str, list[tuple[int, int]]]]:
        """:meth:`render_text` for many conversations: the per-call setup (the tokenizer's BOS probe, the
        generation-tag rewrite, the special tokens) is done once, and the generation markers are found by
        a regex instead of a loop over every character. Same text, spans and refusals as ``render_text``
        (tests compare them on real data for every template)."""
        source = _GEN_TAG.sub(lambda mt: "{{ '" + (_GEN_END if mt.group(1) else _GEN_START) + "' }}",
                              self.chat_template(tokenizer))
        compiled = _compile(source)
        special = _special_tokens(tokenizer)

        def render(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
            for m in messages:
                for v in m.values():
                    if isinstance(v, str) and (_GEN_START in v or _GEN_END in v):
                        raise TemplateError("message contains reserved private-use characters U+E000/U+E001")
            raw = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special,
                                  **kwargs)
            spans: list[tuple[int, int]] = []
            start, seen = None, 0
            for mt in _MARKER.finditer(raw):  # a marker's text position: its raw position less the markers before it
                pos = mt.start() - seen
                seen += 1
                if mt.group() == _GEN_START:
                    start = pos
                else:
                    spans.append((start, pos))
                    start = None
            text = _MARKER.sub("", raw) if seen else raw
            if messages and messages[-1].get("open"):
                return _open_end(text, spans, messages[-1])
            return text, spans

        return render

    def prompt(self, messages: list[dict], tokenizer=None, **kwargs) -> str:
        """The generation prompt (what eval, chat and the server feed the model)."""
        return self.render_text(messages, tokenizer, add_generation_prompt=True, **kwargs)[0]

    def render(self, messages: list[dict], tokenizer, *, add_generation_prompt: bool = False,
               **kwargs) -> Rendered:
        """Token ids and loss labels; trained tokens are exactly the generation-block text.

        Each generation block is tokenized on its own, so no token straddles a prompt/target boundary
        (``### Response:`` + ``"Hi`` would otherwise merge into one ``:"`` token whose loss leaks into
        the prompt, the flaw of Alpaca's length-based masking). This is also the stream the model sees
        at inference: the prompt tokenized alone, then the answer token by token. Where no boundary
        merge exists, the ids equal ``apply_chat_template(tokenize=True)`` exactly (tested)."""
        text, spans = self.render_text(messages, tokenizer, add_generation_prompt=add_generation_prompt,
                                       **kwargs)
        ids: list[int] = []
        labels: list[int] = []
        pos = 0
        for start, end in spans + [(len(text), len(text))]:
            for piece, trained in ((text[pos:start], False), (text[start:end], True)):
                if not piece:
                    continue
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                labels += piece_ids if trained else [IGNORE_INDEX] * len(piece_ids)
            pos = end
        return Rendered(text=text, input_ids=ids, labels=labels)

    def stop_strings(self, tokenizer=None) -> list[str]:
        """Where generation stops: the template's own stops plus the tokenizer's EOS."""
        stops = list(self.stop)
        if tokenizer is not None and tokenizer.eos_token and tokenizer.eos_token not in stops:
            stops.append(tokenizer.eos_token)
        return stops


def _open_end(text: str, spans: list[tuple[int, int]], last: dict) -> tuple[str, list[tuple[int, int]]]:
    """A conversation whose last message is an assistant reply marked ``"open": true`` (a reply cut at a
    token cap, as rejection sampling may keep one) ends with the reply's own text: what the template
    writes after it (the end of turn, EOS) is neither rendered nor trained, so the model is not taught
    to stop where the cap cut it. Works for every template that writes the reply's text verbatim."""
    reply = str(last.get("content", "")).strip()
    if last.get("role") != "assistant" or not spans or not reply:
        raise TemplateError('"open": true marks a trained, non-empty assistant reply, the last message')
    start, end = spans[-1]
    at = text.rfind(reply, start, end)
    if at < 0:
        raise TemplateError('"open": true needs a template that writes the reply text verbatim')
    cut = at + len(reply)
    return text[:cut], [*spans[:-1], (start, cut)]


def _special_tokens(tokenizer) -> dict:
    if tokenizer is None:
        return {"bos_token": "<s>", "eos_token": "</s>"}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        val = getattr(tokenizer, key, None)
        if val is not None:
            out[key] = str(val)
    return out


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def truncate(text: str, stops) -> str:
    """Cut ``text`` at the earliest of ``stops`` (the stop itself dropped), leaving whitespace alone: where a
    reply ends when a stop string, not a stop token, ends it."""
    cut = len(text)
    for s in stops:
        j = text.find(s)
        if j >= 0:
            cut = min(cut, j)
    return text[:cut]
