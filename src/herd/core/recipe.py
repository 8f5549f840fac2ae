"""Recipe files: one YAML per derivative, read top to bottom like the paper's method section.

A recipe names its base, template, data, stages in order, evaluations, and profiles. The top level
holds the PUBLISHED settings (the ``full`` profile); every other profile is a set of overrides whose
differences from the published settings are listed automatically as deviations, next to the
hand-written notes (data substituted, evaluation proxied). One pydantic schema validates the merged
result before anything loads; errors name the file and the field path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from herd.core.errors import ConfigError
from herd.core.paths import repo_root
from herd.core.registry import BUILDS, EVALS, STAGE_CONFIGS, TRANSFORMS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def hash_neutral(value) -> dict:
    """``Field(..., json_schema_extra=hash_neutral(v))`` for a setting added after runs exist: at ``v`` it
    computes what herd computed before the setting existed, so a stage's folder hash leaves it out at that
    value and an upgrade does not turn finished stages into unfinished ones. Any other value is hashed.
    The value is written here, not read from the default, so a later change of default still changes
    the hash."""
    return {"hash_neutral": value}


def hash_dump(model: BaseModel) -> dict:
    """``model.model_dump(mode="json")`` without the settings that sit at their :func:`hash_neutral` value
    (nested settings included): what a stage's folder hash covers."""
    out = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value, extra = getattr(model, name), field.json_schema_extra
        if isinstance(extra, dict) and "hash_neutral" in extra and value == extra["hash_neutral"]:
            del out[name]
        elif isinstance(value, BaseModel):
            out[name] = hash_dump(value)
        elif isinstance(value, (list, tuple)):
            out[name] = [hash_dump(v) if isinstance(v, BaseModel) else o for v, o in zip(value, out[name])]
    return out


class DataSource(_Strict):
    """One input file. ``path`` may start with ``shared:`` (the shared datasets folder)."""

    name: str
    path: str
    format: str = "alpaca"
    columns: dict[str, str] | None = None
    options: dict = {}  # passed to the format's reader (e.g. retrieval settings, label mappings)
    max_records: int | None = Field(default=None, gt=0)


class LoraSpec(_Strict):
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainStage(_Strict):
    """Optimisation settings shared by every gradient stage (SFT, continued pretraining)."""

    name: str
    kind: str
    # qlora: the frozen base in 4-bit NF4 (bitsandbytes, double quantisation) under the LoRA adapter
    method: Literal["full", "lora", "qlora"] = "full"
    lora: LoraSpec = LoraSpec()
    lr: float = Field(default=2e-5, gt=0)
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    global_batch: int = Field(default=128, gt=0)
    micro_batch_rows: int = Field(default=4, gt=0)
    max_len: int = Field(default=512, ge=16)
    pack: bool = True
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    schedule: Literal["cosine"] = "cosine"
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0)
    grad_clip: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile the decoder layers (engine/compiling.py)
    # compiled layers keep this share of their activations and recompute the rest in the backward
    # (0: activation checkpointing per layer; engine/compiling.py). Same numbers, less memory, more time
    activation_budget: float = Field(default=1.0, ge=0, le=1)
    # AdamW's two moments in fp32 or bf16 (stochastic rounding, engine/optimizers.py): bf16 saves 4 bytes
    # per trained parameter (0.54 GB on SmolLM2 full fine-tuning); 8bit: bitsandbytes' blockwise 8-bit
    # AdamW (6 bytes less); neither with fsdp
    optimizer_state: Literal["fp32", "bf16", "8bit"] = "fp32"
    # glibc only: allocations of at least this many MB come from the OS and go back when freed (0: glibc's
    # adaptive threshold, which serves a step's large activation tensors from a heap that keeps their pages).
    # Less peak memory, more page faults (core/phases.py); process-wide once a stage sets it. The heap is
    # then also trimmed between micro-batches
    heap_mmap_threshold_mb: int = Field(default=0, ge=0, le=32)
    # the attention kernel for packed rows (engine/attention.py): auto = flash-attn, else flex, on CUDA; SDPA on CPU
    attention: Literal["auto", "sdpa", "flex_attention", "flash_attention_2", "eager"] = "auto"
    fsdp: bool = False
    checkpoint_every: int = Field(default=0, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _bf16_state_unsharded(self):
        if self.optimizer_state != "fp32" and self.fsdp:
            raise ValueError(f"optimizer_state {self.optimizer_state} does not support fsdp (sharded parameters); "
                             "use fp32")
        if self.method == "qlora" and self.fsdp:
            raise ValueError("method qlora does not support fsdp here (4-bit weights are not sharded); use DDP")
        return self


class SFTStage(TrainStage):
    """Supervised fine-tuning: masked causal LM on templated records (loss on trained spans only).

    ``global_batch`` counts EXAMPLES per optimizer step, as papers do; records are packed into rows of
    ``max_len`` tokens for compute without changing the loss. ``micro_batch_rows`` packed rows go
    through each forward (gradient accumulation covers the rest)."""

    name: str = "sft"
    kind: Literal["sft"] = "sft"
    # examples whose prompts start alike are batched together and the common prefix runs once per step
    # (engine/shared_prefix.py): for long shared instructions (Llama Guard's taxonomy) and short targets;
    # with gradient_checkpointing the prefix pass is recomputed for its backward instead of kept
    shared_prefix: bool = False


class DocSource(_Strict):
    """A pretraining source: documents of a ``format`` (herd.data.documents), mixed by token ``share``."""

    name: str
    path: str  # a file, a directory, a glob, ``stdlib:``, or ``shared:NAME/FILE``
    format: str = "text"
    options: dict = {}
    share: float | None = Field(default=None, ge=0)  # token proportion in the mixture (normalised)


class FIMSpec(_Strict):
    """Fill-in-the-middle (Code Llama §3.3): character-level split, applied per document before packing."""

    rate: float = Field(default=0.9, ge=0, le=1)  # probability a document is transformed
    spm_rate: float = Field(default=0.5, ge=0, le=1)  # share of transformed documents in SPM layout
    # SPM's prefix+middle: encoded together (the paper: SPM never sees a token split at the junction) or
    # each on its own, as the SPM inference prompt ends (enc(prefix)); byte-level BPEs such as SmolLM2's
    # merge a newline with the next line's indentation, so every line-boundary split is mid-token there
    spm_encoding: Literal["joint", "separate"] = "joint"
    seed: int = 0


class TestSet(_Strict):
    """Evaluation texts that must never be trained on: every training document is checked against them
    (exact normalised match, or 13-gram overlap) before any row is written (herd.data.documents.pubmedqa)."""

    name: str
    path: str
    format: Literal["pubmedqa"] = "pubmedqa"  # the official test split's contexts and long answers


class PretrainStage(TrainStage):
    """Continued pretraining: causal LM on raw documents joined by a separator and cut into rows of
    ``max_len`` tokens (no masking, no padding); ``global_batch`` counts ROWS (sequences), as papers do.

    Documents are streamed and the rows written to a memory-mapped file, so memory stays flat as the
    corpus grows. Options: FIM (Code Llama), a RoPE base change with longer rows (LCFT), a mixture by
    token share with replay (Meditron)."""

    name: str = "pretrain"
    kind: Literal["pretrain"] = "pretrain"
    epochs: float = Field(default=1.0, gt=0)  # a token budget (total_tokens) usually bounds the run instead
    data: list[DocSource] = Field(min_length=1)
    total_tokens: int | None = Field(default=None, gt=0)  # mixture budget (None: every source once)
    separator: str = "auto"  # token between documents: "auto" = <|endoftext|> if the vocabulary has it, else EOS
    fim: FIMSpec | None = None
    rope_theta: float | None = Field(default=None, gt=0)  # LCFT: new RoPE base period written into the config
    heldout_fraction: float = Field(default=0.0, ge=0, lt=1)  # documents held out (by hash) for a held-out loss
    heldout_max_rows: int = Field(default=32, ge=0)
    decontaminate: list[TestSet] = []  # test sets no training document may contain


# Stage configs register by kind; the alignment stages' configs register from herd.stages.configs (no torch).
STAGE_CONFIGS.add("sft", SFTStage)
STAGE_CONFIGS.add("pretrain", PretrainStage)
POLICY_KINDS = ("sft", "pretrain", "rejection_sampling", "dpo", "ppo")  # stages whose output is the next parent


class PublishedResult(_Strict):
    claim: str
    source: str
    comparable: bool = False
    why_not: str | None = None


class Recipe(_Strict):
    name: str
    title: str
    method: str  # one paragraph: what the paper did
    dossier: str  # section of shared/reference/recipes.md
    base: str = "smollm2"
    paper_base: str
    template: str
    license_note: str | None = None
    data: list[DataSource] = []  # SFT records (pretraining stages name their own documents)
    builds: list[dict] = []  # data builds run before training (see herd.data.builds)
    transforms: list[dict] = []  # applied in order after reading, before dedupe/split (herd.data.transforms)
    eval_size: int = Field(default=50, ge=0)
    # dev_size of the held-out records (lowest hash rank: a larger eval_size keeps the earlier held-out
    # set as dev) are for choosing settings; the rest are the test split, scored once per final run
    dev_size: int = Field(default=0, ge=0)
    eval_split: Literal["test", "dev"] = "test"  # which held-out split the evals score
    split_seed: int = 42
    max_train_records: int | None = Field(default=None, gt=0)
    stages: list  # one config per stage; validated by recipe_model() against every registered kind
    evals: dict[str, dict | None] = {"heldout_loss": {}}  # registered eval name → its settings
    published: list[PublishedResult] = []
    report_to: list[str] = []  # training metrics also to: tensorboard, mlflow, wandb (herd.engine.reporting)
    notes: list[str] = []  # deviations of every profile (e.g. data that is not the paper's)
    profile: str = "full"
    deviations: list[str] = []  # filled in by load_recipe: profile notes + computed differences
    source_file: str | None = None

    @model_validator(mode="after")
    def _splits(self):
        """dev_size and eval_split against eval_size (a cross-field check, so pydantic's loc is empty)."""
        if self.dev_size and self.dev_size >= self.eval_size:
            raise ValueError(f"dev_size: {self.dev_size} leaves no test records (eval_size {self.eval_size})")
        if self.eval_split == "dev" and not self.dev_size:
            raise ValueError("eval_split: dev needs a dev split (dev_size > 0)")
        return self


_RECIPE_MODELS: dict[tuple[str, ...], type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """:class:`Recipe` whose ``stages`` is the union of every registered stage config, told apart by
    ``kind`` (built once the plugins have registered; errors read ``stages.0.sft.lr``)."""
    kinds = tuple(sorted(STAGE_CONFIGS))
    if kinds not in _RECIPE_MODELS:
        union = Union[tuple(STAGE_CONFIGS[k] for k in kinds)]  # noqa: UP007  (a runtime tuple of classes)
        stage = Annotated[union, Field(discriminator="kind")]
        _RECIPE_MODELS[kinds] = create_model("Recipe", __base__=Recipe, __module__=__name__,
                                             stages=(list[stage], ...))
    return _RECIPE_MODELS[kinds]


def eval_max_len(recipe: Recipe) -> int:
    """The row length evals use: the last stage that has one (a rejection-sampling stage's SFT run)."""
    for st in reversed(recipe.stages):
        n = getattr(st, "max_len", None) or getattr(getattr(st, "sft", None), "max_len", None)
        if n:
            return n
    return 2048


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (``alpaca``) resolves to ``recipes/alpaca.yaml`` of this checkout."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        return p
    cand = repo_root() / "recipes" / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = sorted(x.stem for x in (repo_root() / "recipes").glob("*.yaml"))
    raise ConfigError(f"unknown recipe '{name_or_path}'; known: {', '.join(known) or 'none'}")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "stages":
            if not isinstance(v, dict):
                raise ConfigError(f"{where}.stages: give a mapping of stage name → overrides")
            names = [s.get("name", s.get("kind")) for s in out.get("stages", [])]
            for sname, sover in v.items():
                if sname not in names:
                    raise ConfigError(f"{where}.stages.{sname}: no stage of that name (have {names})")
                i = names.index(sname)
                out["stages"][i] = _merge(out["stages"][i], sover, f"{where}.stages.{sname}")
        elif k == "transforms" and isinstance(v, dict):  # overrides by kind, like stages by name
            kinds = [t.get("kind") for t in out.get("transforms", [])]
            for kind, tover in v.items():
                if kind not in kinds:
                    raise ConfigError(f"{where}.transforms.{kind}: no transform of that kind (have {kinds})")
                i = kinds.index(kind)
                out["transforms"][i] = _merge(out["transforms"][i], tover, f"{where}.transforms.{kind}")
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _diff(full, prof, path="") -> list[str]:
    """Human-readable differences between the published and the profile's effective settings."""
    out = []
    if isinstance(full, dict) and isinstance(prof, dict):
        for k in prof:
            if k in ("profile", "deviations", "source_file", "notes", "published", "method", "title"):
                continue
            out += _diff(full.get(k), prof[k], f"{path}.{k}" if path else k)
    elif isinstance(full, list) and isinstance(prof, list) and len(full) == len(prof) and path == "stages":
        for f, p in zip(full, prof):
            out += _diff(f, p, f"stages.{p.get('name')}")
    elif isinstance(full, list) and isinstance(prof, list) and len(full) == len(prof) and path == "transforms":
        for f, p in zip(full, prof):
            out += _diff(f, p, f"transforms.{p.get('kind')}")
    elif full != prof:
        out.append(f"{path}: {prof!r} (published: {full!r})")
    return out


def _check_evals(rec: Recipe, path: Path, profile: str) -> None:
    """Validate each eval's settings against its registered config (before any model loads)."""
    for name, settings in rec.evals.items():
        if name not in EVALS:
            raise ConfigError(f"{path}: evals.{name}: unknown evaluation (known: {EVALS.known()})")
        try:
            rec.evals[name] = EVALS[name][0].model_validate(settings or {}).model_dump()
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"{path}: evals.{name} (profile '{profile}'): {msgs}") from None


def _check_stage_order(rec: Recipe, path: Path, profile: str) -> None:
    """A stage that reads an earlier stage's output (``check_earlier`` on its config) names one."""
    for i, st in enumerate(rec.stages):
        problem = st.check_earlier(rec.stages[:i]) if hasattr(st, "check_earlier") else None
        if problem:
            raise ConfigError(f"{path}: stages.{st.name} (profile '{profile}'): {problem}")


def _check_kinds(entries: list[dict], registry: dict, field: str, noun: str, path: Path, profile: str) -> None:
    """Validate a list of ``{kind: …, …}`` entries in place against a registry of (config, fn)."""
    for i, entry in enumerate(entries):
        kind = (entry or {}).get("kind")
        if kind not in registry:
            raise ConfigError(f"{path}: {field}[{i}].kind: unknown {noun} '{kind}' "
                              f"(known: {', '.join(sorted(registry)) or 'none'})")
        try:
            entries[i] = registry[kind][0].model_validate(entry).model_dump()
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
            raise ConfigError(f"{path}: {field}[{i}] (profile '{profile}'): {msgs}") from None


def _check_builds(rec: Recipe, path: Path, profile: str) -> None:
    _check_kinds(rec.builds, BUILDS, "builds", "data build", path, profile)


def _check_transforms(rec: Recipe, path: Path, profile: str) -> None:
    _check_kinds(rec.transforms, TRANSFORMS, "transforms", "data transform", path, profile)


def load_recipe(name_or_path: str, profile: str = "tiny", overrides: dict | None = None) -> Recipe:
    """Read, merge the profile, validate. Nothing heavy happens before this succeeds."""
    path = recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping")
    profiles = raw.pop("profiles", {}) or {}
    if profile != "full" and profile not in profiles:
        raise ConfigError(f"{path}: no profile '{profile}' (have: full, {', '.join(profiles)})")
    prof = dict(profiles.get(profile) or {})
    prof_notes = prof.pop("deviations", [])
    merged = _merge(raw, prof, f"profiles.{profile}")
    if overrides:
        merged = _merge(merged, overrides, "overrides")
    try:
        model = recipe_model()
        full = model.model_validate({**raw, "source_file": str(path)})
        rec = model.model_validate({**merged, "profile": profile, "source_file": str(path)})
    except ValidationError as e:
        lines = [f"{path}: invalid recipe (profile '{profile}')"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")  # a cross-field check names its fields itself
            lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
        raise ConfigError("\n".join(lines)) from None
    _check_builds(full, path, "full")
    _check_builds(rec, path, profile)
    _check_transforms(full, path, "full")
    _check_transforms(rec, path, profile)
    _check_evals(full, path, "full")
    _check_evals(rec, path, profile)
    _check_stage_order(full, path, "full")
    _check_stage_order(rec, path, profile)
    computed = _diff(full.model_dump(), rec.model_dump())
    rec.deviations = list(rec.notes) + list(prof_notes) + [f"setting {d}" for d in computed]
    return rec
