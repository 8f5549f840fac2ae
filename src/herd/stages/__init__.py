"""Stage kinds. Each kind's module registers ``run(cfg, ctx) -> (artifact path, summary)`` in
:data:`herd.core.registry.STAGES` (and its config in ``STAGE_CONFIGS``); ``herd derive`` calls every kind
the same way, with the :class:`StageContext` below."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageContext:
    """What a stage may use besides its config: the model it starts from and where its artifact goes."""

    parent: object  # BaseRef: the previous policy artifact, or the base
    template: object  # Template: the recipe's template
    out: Path  # the stage's artifact folder (written atomically)
    name: str  # the artifact's lineage name
    recipe: dict | None = None  # name, file, profile, sha256 (for the lineage)
    resume: bool = False
    progress: bool = True
    workspace: Path | None = None  # the derive run folder (earlier stages' artifacts, e.g. a reward model)
    recipe_dir: Path | None = None  # relative data paths resolve against it
    train: list = field(default_factory=list)  # the recipe's SFT records (train split)
    data: list[dict] = field(default_factory=list)  # the recipe's data files as lineage records
    earlier: dict[str, Path] = field(default_factory=dict)  # this run's finished stages: name -> folder
