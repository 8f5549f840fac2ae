"""The family catalogue: who the Llama derivatives are, as data, validated before anything reads it.

``catalogue.yaml`` (shipped next to this module) holds one entry per member: parents, sizes, purpose,
data, methods, template, published scores and sources, each cited to a section of the recipe dossier
(``../shared/reference/recipes.md``), plus the herd recipe that re-derives it. The schema lives here so
that a typo in the data fails loudly in tests, naming the member and the field, instead of printing a
wrong table later.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from herd.core.errors import ConfigError, HerdError
from herd.core.paths import repo_root

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")
SCHEMA = "herd.family/1"

# A section of the dossier: "§4" or "§4.5".
Section = Annotated[str, StringConstraints(pattern=r"^§\d+(\.\d+)*$")]
StageKind = Literal["pretrain", "sft", "reward", "rejection", "dpo", "ppo"]
CiteKey = Literal["sizes", "data", "template", "method", "evaluation"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Score(_Strict):
    """One published number, exactly as the dossier gives it."""

    release: str  # which released model the number belongs to, e.g. "Code Llama 7B"
    benchmark: str
    metric: str
    value: float
    unit: str = ""
    note: str | None = None
    cite: Section
    tag: Literal["R", "P", "B", "2nd", "mem"]  # the dossier's verification tag
    source: str  # the dossier's source key and table, e.g. "C1 Table 2"

    def value_text(self) -> str:
        # MT-bench-style scores are quoted with two decimals (6.00, not 6).
        value = f"{self.value:.2f}" if self.unit == "/10" else f"{self.value:g}"
        return value + (self.unit if self.unit in ("", "%") else f" {self.unit}")

    def text(self) -> str:
        return f"{self.benchmark} {self.metric} {self.value_text()}"


class Template(_Strict):
    name: str  # herd template name (herd/templates/)
    note: str


class License(_Strict):
    """What the dossier says about licenses; null fields mean the dossier is silent, not 'none'."""

    model: str | None = None
    data: str | None = None
    cite: Section | None = None
    note: str | None = None


class Source(_Strict):
    key: str  # the dossier's source key (§11 and each section's "Sources:" line)
    title: str
    url: str | None = None
    commit: str | None = None


class RecipeRef(_Strict):
    """The herd recipe that re-derives a member; ``planned`` ones need not exist yet."""

    file: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+\.yaml$")]
    status: Literal["available", "planned"]
    note: str | None = None

    @property
    def name(self) -> str:
        return self.file.removesuffix(".yaml")

    def path(self, recipes_dir: Path | None = None) -> Path:
        return (recipes_dir or recipes_root()) / self.file


class Member(_Strict):
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$")]
    name: str
    org: str
    released: str | None = None
    role: Literal["parent", "derivative"]
    parents: list[str] = Field(default_factory=list)  # member ids; empty for roots and non-Llama bases
    llama_based: bool = True
    base: str
    sizes: list[str]
    sizes_note: str | None = None
    purpose: str
    data: str
    methods: list[str]
    stages: list[StageKind] = Field(default_factory=list)
    template: Template | None = None
    hyperparameters: str | None = None
    evaluation: str
    scores: list[Score]
    license: License
    section: Section
    cites: dict[CiteKey, Section]
    sources: list[Source]
    recipe: RecipeRef | None = None
    full_base: str | None = None  # the published-scale base, for the `--profile full` command
    note: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Member:
        if self.role == "derivative" and (self.recipe is None or self.full_base is None or not self.stages):
            raise ValueError("a derivative needs a recipe, stages and a full_base")
        if self.role == "parent" and self.recipe is not None:
            raise ValueError("a parent is not re-derived, so it has no recipe")
        if not self.llama_based and not self.note:
            raise ValueError("a member not built on Llama must say so in 'note'")
        if self.role == "derivative" and self.llama_based and not self.parents:
            raise ValueError("a Llama-based derivative names its parent member(s)")
        return self

    @property
    def headline(self) -> Score | None:
        """The first score is the headline (the dossier's §0 'Headline eval' where it has one)."""
        return self.scores[0] if self.scores else None

    def recipe_state(self) -> str:
        """Declared status, corrected by what is on disk (a stale 'available' is worse than none)."""
        if self.recipe is None:
            return "-"
        exists = self.recipe.path().is_file()
        if self.recipe.status == "available":
            return "available" if exists else "available (file missing!)"
        return "planned (file present)" if exists else "planned"

    def profiles(self) -> list[str]:
        """The profiles the recipe file defines (empty when it has none or is not written yet)."""
        if self.recipe is None or not self.recipe.path().is_file():
            return []
        import yaml

        raw = yaml.safe_load(self.recipe.path().read_text()) or {}
        return list((raw.get("profiles") or {}).keys())

    def derive_command(self, profile: Literal["tiny", "small", "gpu", "full"]) -> str | None:
        """The exact ``herd derive`` line that reproduces this member at ``profile`` scale."""
        if self.recipe is None:
            return None
        if profile in ("tiny", "small", "gpu"):
            return f"herd derive {self.recipe.name} --base smollm2 --profile {profile}"
        slug = re.sub(r"[^a-z0-9]+", "-", (self.full_base or "llama").lower()).strip("-")
        return f"herd derive {self.recipe.name} --base /path/to/{slug} --profile full"


class Catalogue(_Strict):
    schema_: Literal["herd.family/1"] = Field(alias="schema")
    source: str
    members: list[Member]

    @model_validator(mode="after")
    def _links(self) -> Catalogue:
        ids = [m.id for m in self.members]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate member ids: {', '.join(dupes)}")
        for m in self.members:
            missing = [p for p in m.parents if p not in ids]
            if missing:
                raise ValueError(f"member '{m.id}': unknown parent(s) {', '.join(missing)}")
        return self

    @cached_property
    def by_id(self) -> dict[str, Member]:
        return {m.id: m for m in self.members}

    def find(self, name: str) -> Member:
        """A member by id, name or recipe name, ignoring case and punctuation ('Llama-2-Chat')."""
        want = _norm(name)
        for keys in (lambda m: [m.id], lambda m: [m.name], lambda m: [m.recipe.name] if m.recipe else []):
            hits = [m for m in self.members if want in {_norm(k) for k in keys(m)}]
            if hits:
                return hits[0]
        raise HerdError(f"no family member named '{name}'; known: {', '.join(self.by_id)}")

    def children(self, member_id: str) -> list[Member]:
        return [m for m in self.members if member_id in m.parents]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def recipes_root() -> Path:
    """Where recipe files live: ``<checkout>/recipes``."""
    return repo_root() / "recipes"


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate the catalogue; errors name the file, the member and the field."""
    path = Path(path) if path else CATALOGUE_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the family catalogue ({e})") from e
    try:
        return Catalogue.model_validate(raw)
    except ValidationError as e:
        members = raw.get("members") if isinstance(raw, dict) else None
        lines = [f"{path}: invalid family catalogue"]
        for err in e.errors():
            lines.append(f"  {_where(err['loc'], members)}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from e


def _where(loc: tuple, members: list | None) -> str:
    """``('members', 3, 'scores', 0, 'value')`` → ``members[vicuna].scores[0].value``."""
    out = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label = part
            if i == 1 and loc[0] == "members" and members and part < len(members):
                label = (members[part] or {}).get("id", part) if isinstance(members[part], dict) else part
            out[-1] += f"[{label}]"
        else:
            out.append(str(part))
    return ".".join(out) or "(top level)"
