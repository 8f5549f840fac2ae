"""Registries: name → plugin, filled by the plugins themselves when their module is imported.

A registry never imports its plugins (that made the import circles of issue 16). The one place that
imports every plugin is the plugin list, :mod:`herd.plugins`. A registry asks for it by name on its first
lookup, the way Python entry points work, so every caller (``herd derive``, a test calling
``load_examples``, a user's script) sees every plugin without the low layers importing the high ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

PLUGIN_LIST = "herd.plugins"  # its load() imports every stage, eval, reader, document format, build, transform
_loaded: set[str] = set()


def load_plugins(level: str = "all") -> None:
    """Import the plugin list once per level (idempotent). ``configs``: every module a recipe needs to be
    validated, none of which imports torch; ``all``: also the stages' run functions (torch)."""
    if level in _loaded or "all" in _loaded:
        return
    _loaded.add(level)  # first: the plugin modules look registries up while they import
    plugins = importlib.import_module(PLUGIN_LIST)
    plugins.load() if level == "all" else plugins.load_configs()


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping for users (``name in REG``, ``REG[name]``, ``sorted(REG)``) that plugins add to
    with :meth:`add` or the :meth:`register` decorator. Reading it loads the plugin list first."""

    def __init__(self, noun: str, level: str = "configs"):
        self.noun, self.level = noun, level  # the plugin-list level that fills this registry
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def register(self, name: str, wrap: Callable[[object], T] | None = None):
        """Decorator: ``@REG.register("alpaca")`` stores the function or class (or ``wrap(it)``)."""
        def deco(obj):
            self.add(name, wrap(obj) if wrap else obj)
            return obj

        return deco

    def __getitem__(self, name: str) -> T:
        load_plugins(self.level)
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        load_plugins(self.level)
        return iter(self._entries)

    def __len__(self) -> int:
        load_plugins(self.level)
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        load_plugins(self.level)
        return name in self._entries

    def known(self) -> str:
        """``alpaca, dolly, ...``: for error messages."""
        return ", ".join(sorted(self)) or "none"


# Every plugin kind's registry lives here, below all of them, so schema validation (herd.core.recipe) and
# the layers that use plugins reach them without importing a plugin module.
READERS: Registry = Registry("data format")  # format → reader(path, **options) -> list[Example]
DOC_FORMATS: Registry = Registry("document format")  # format → (check, stream)
BUILDS: Registry = Registry("data build")  # kind → (config class, build function)
TRANSFORMS: Registry = Registry("data transform")  # kind → (config class, transform function)
EVALS: Registry = Registry("evaluation")  # name → (config class, eval function)
STAGE_CONFIGS: Registry = Registry("stage kind")  # kind → pydantic config class (no torch)
STAGES: Registry = Registry("stage kind", level="all")  # kind → run(cfg, StageContext) -> (artifact path, summary)
STAGE_CHECKS: Registry = Registry("stage check", level="all")  # kind → check(cfg, recipe_dir): before any model loads
