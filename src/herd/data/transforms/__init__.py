"""Data transforms: steps that RESHAPE validated records between reading and the train/eval split.

A recipe's ``transforms:`` list names registered transforms in order (FastChat's ShareGPT cleaning for
Vicuna, Ghost Attention for Llama-2-Chat, Dolly's category-stratified sample). Each is
``fn(examples, cfg, ctx) -> examples``; its settings are a pydantic model validated when the recipe
loads, and everything it changes or drops goes into ``ctx.report`` (a :class:`DataReport`), which
``herd derive`` prints and stores in the scorecard and the artifact's lineage. Transforms run on the
whole data before dedupe and the split, as FastChat cleans before ``split_train_test``; held-out
records therefore look exactly like training records (a GAtt record is scored on its last turn).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from herd.core.errors import ConfigError
from herd.core.progress import Progress
from herd.core.registry import TRANSFORMS
from herd.data.records import Example
from herd.data.report import DataReport, where_example


class TransformConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    enabled: bool = True


@dataclass
class TransformContext:
    recipe: object
    base_spec: str  # the derivation's base: its tokenizer measures lengths, it may sample replies
    report: DataReport = field(default_factory=DataReport)
    progress: bool = True
    # responder(spec, *, temperature, max_new_tokens, seed) -> respond(messages) -> reply: how a transform
    # samples replies from a model. The pipeline passes herd.engine.generation.model_responder; the data
    # layer itself never loads a model.
    responder: Callable | None = None
    _tokenizer: object = None

    @property
    def template(self):
        from herd.templates import get_template

        return get_template(self.recipe.template)

    def tokenizer(self):
        """The base's tokenizer (no weights load), cached: lengths are measured as training sees them."""
        if self._tokenizer is None:
            from herd.base import load_tokenizer, resolve_base

            self._tokenizer = load_tokenizer(resolve_base(self.base_spec))
        return self._tokenizer

    def sft_max_len(self) -> int:
        return min(st.max_len for st in self.recipe.stages if st.kind == "sft")


TransformFn = Callable[[list[Example], TransformConfig, TransformContext], list[Example]]


def register_transform(kind: str, config: type[TransformConfig]):
    """Decorator of a transform: ``kind`` → (its config class, the transform function)."""
    return TRANSFORMS.register(kind, lambda fn: (config, fn))


def apply_transforms(examples: list[Example], recipe, base_spec: str, *, progress: bool = True,
                     responder: Callable | None = None) -> tuple[list[Example], DataReport]:
    """Run the recipe's transforms in order; returns the records and the report of what changed."""
    ctx = TransformContext(recipe=recipe, base_spec=base_spec, progress=progress, responder=responder)
    for spec in recipe.transforms:
        cfg_cls, fn = TRANSFORMS[spec["kind"]]
        cfg = cfg_cls.model_validate(spec)
        if cfg.enabled:
            n_in = len(examples)
            examples = fn(examples, cfg, ctx)
            ctx.report.size(f"transform {cfg.kind}", n_in, len(examples))
    return examples, ctx.report


def report_markdown(report: DataReport) -> str:
    """The scorecard section: records in/out per step and every change or drop with its reason."""
    lines = ["## Data transforms", "", "| step | records in | records out |", "|---|---:|---:|"]
    lines += [f"| {s} | {i} | {o} |" for s, (i, o) in report.sizes.items()]
    if report.counts:
        lines += ["", "| step | action | reason | count | e.g. |", "|---|---|---|---:|---|"]
        for (a, s, r), n in sorted(report.counts.items()):
            lines.append(f"| {s} | {a} | {r} | {n} | {'; '.join(report.places[(a, s, r)][:2])} |")
    return "\n".join(lines)


# -- built-in transforms ----------------------------------------------------------------------------

class TemplateRolesConfig(TransformConfig):
    """Drop conversations with turns the recipe's template cannot render (e.g. tool calls for Vicuna,
    whose FastChat cleaning keeps only strict human/gpt alternation after an optional system turn)."""


@register_transform("template_roles", TemplateRolesConfig)
def template_roles(examples: list[Example], cfg: TemplateRolesConfig, ctx: TransformContext) -> list[Example]:
    allowed = set(ctx.template.roles)
    out = []
    for ex in examples:
        bad = sorted({m["role"] for m in ex.messages} - allowed)
        if bad or any(m.get("tool_calls") for m in ex.messages):
            ctx.report.dropped("template_roles", f"role(s) {', '.join(bad) or 'tool call'} not in template "
                               f"{ctx.template.name}", where_example(ex))
        else:
            out.append(ex)
    return out


class VicunaCleanConfig(TransformConfig):
    """FastChat's prepare_all steps (herd.data.transforms.fastchat_clean); defaults are Vicuna's. ``max_length``: split
    conversations into chunks that fit this many tokens of the recipe's template (None = the SFT
    stage's ``max_len``, as FastChat splits to the model length it trains with); ``split_long: false``
    skips the step."""

    html: Literal["auto", "always", "never"] = "auto"
    blocked_words: list[str] = ["openai", "chatgpt"]
    min_chars: int = Field(default=16, ge=0)
    dedup: bool = True
    keep_lang: str | None = None
    skip_lang: str | None = None  # Vicuna: "ko" (needs the langdetect package)
    reduce_rep: bool = False
    wrong_format: bool = True
    split_long: bool = True
    max_length: int | None = Field(default=None, ge=16)


@register_transform("vicuna_clean", VicunaCleanConfig)
def vicuna_clean(examples: list[Example], cfg: VicunaCleanConfig, ctx: TransformContext) -> list[Example]:
    from herd.data.transforms.fastchat_clean import CleanOptions, clean_sharegpt

    max_length = (cfg.max_length or ctx.sft_max_len()) if cfg.split_long else None
    opts = CleanOptions(html=cfg.html, blocked_words=tuple(cfg.blocked_words), min_chars=cfg.min_chars,
                        dedup=cfg.dedup, keep_lang=cfg.keep_lang, skip_lang=cfg.skip_lang,
                        reduce_rep=cfg.reduce_rep, wrong_format=cfg.wrong_format, max_length=max_length)
    tok = ctx.tokenizer() if max_length else None
    return clean_sharegpt(examples, opts, template=ctx.template if max_length else None, tokenizer=tok,
                          report=ctx.report)


class GattConfig(TransformConfig):
    """Ghost Attention (herd.data.transforms.ghost_attention). ``fraction`` of the dialogues with at least ``min_turns``
    exchanges become GAtt records; with ``keep_rest`` the other records stay as ordinary SFT data.

    ``respond``: ``dialogue`` keeps each dialogue's own replies (cheap; the replies do not follow the
    instruction, so this trains the format and the loss mask, not the behaviour); ``model`` is the
    paper's method: every reply is re-sampled, turn by turn, from ``respond_model`` (default: the
    derivation's base; the paper used its latest RLHF model) in that model's own template, with the
    instruction attached to every user turn."""

    seed: int = 0
    fraction: float = Field(default=1.0, gt=0, le=1)
    min_turns: int = Field(default=2, ge=1)
    max_combined: int = Field(default=2, ge=1)
    keep: Literal["system", "prefix"] = "system"
    keep_rest: bool = True
    constraints: dict[str, tuple[str, list[str]]] | None = None  # family -> (phrase with {}, values)
    respond: Literal["dialogue", "model"] = "dialogue"
    respond_model: str | None = None
    respond_temperature: float = Field(default=0.7, ge=0)  # not given in the paper
    respond_max_new_tokens: int = Field(default=256, gt=0)


def _body(ex: Example) -> list[dict]:
    return ex.messages[1:] if ex.messages and ex.messages[0]["role"] == "system" else ex.messages


def _is_dialogue(ex: Example, min_turns: int) -> bool:
    body = _body(ex)
    roles = [m["role"] for m in body]
    return len(body) >= 2 * min_turns and roles == ["user", "assistant"] * (len(body) // 2)


@register_transform("gatt", GattConfig)
def gatt(examples: list[Example], cfg: GattConfig, ctx: TransformContext) -> list[Example]:
    from herd.data.transforms.ghost_attention import CONSTRAINTS, gatt_transform

    constraints = ({k: (v[0], tuple(v[1])) for k, v in cfg.constraints.items()} if cfg.constraints
                   else CONSTRAINTS)
    eligible = [i for i, ex in enumerate(examples) if _is_dialogue(ex, cfg.min_turns)]
    rng = random.Random(cfg.seed)
    chosen = sorted(rng.sample(eligible, round(cfg.fraction * len(eligible)))) if eligible else []
    respond = None
    sampled = cfg.respond == "model" and bool(chosen)
    if sampled:
        if ctx.responder is None:
            raise ConfigError("transforms.gatt: respond: model samples replies from a model; run it through "
                              "herd derive (which provides the responder), or use respond: dialogue")
        sample = ctx.responder(cfg.respond_model or ctx.base_spec, temperature=cfg.respond_temperature,
                                 max_new_tokens=cfg.respond_max_new_tokens, seed=cfg.seed)

        def counted(messages: list[dict]) -> str:
            reply = sample(messages)
            bar.update(1)
            return reply

        respond = counted
    # one sampled reply per exchange of every chosen dialogue
    bar = Progress(total=sum(len(_body(examples[i])) // 2 for i in chosen), desc="transform gatt replies",
                   unit="reply", enabled=ctx.progress and sampled)
    with bar:
        converted = gatt_transform([examples[i] for i in chosen], seed=cfg.seed, respond=respond,
                                   constraints=constraints, max_combined=cfg.max_combined, min_turns=cfg.min_turns,
                                   keep=cfg.keep, report=ctx.report)
    for ex in converted:
        ctx.report.changed("gatt", "instruction added, earlier turns untrained"
                           + (", replies re-sampled" if respond else ", own replies kept"), where_example(ex))
    by_index = dict(zip(chosen, converted))
    out = []
    for i, ex in enumerate(examples):
        if i in by_index:
            out.append(by_index[i])
        elif cfg.keep_rest:
            out.append(ex)
        else:
            ctx.report.dropped("gatt", "not converted (keep_rest: false)", where_example(ex))
    return out


class StratifiedSampleConfig(TransformConfig):
    """``n`` records spread evenly over ``meta[key]`` (dossier §10.3: Dolly 15K -> 1-3K over its 8
    categories). Fewer records than ``n``: all are kept."""

    n: int = Field(gt=0)
    key: str = "category"
    seed: int = 42


@register_transform("stratified_sample", StratifiedSampleConfig)
def stratified(examples: list[Example], cfg: StratifiedSampleConfig, ctx: TransformContext) -> list[Example]:
    from herd.data.readers.dolly import stratified_sample

    out = stratified_sample(examples, cfg.n, seed=cfg.seed, key=cfg.key)
    kept = {id(ex) for ex in out}
    for ex in examples:
        if id(ex) not in kept:
            ctx.report.dropped("stratified_sample", f"not in the stratified sample of {cfg.n}", where_example(ex))
    return out
