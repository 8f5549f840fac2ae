"""The plugin list: the one module that imports every data reader, document format, data build, data
transform, stage kind and evaluation, so that each registers itself (herd.core.registry).

A new plugin is its own module plus one line here. Registries load this list on their first lookup:
:func:`load_configs` for what validating a recipe needs (no torch), :func:`load` for everything.
"""

from __future__ import annotations


def load_configs() -> None:
    """The plugins a recipe is validated against; none of these modules imports torch."""
    # data formats (herd.data.load_examples)
    from herd.data.readers import (  # noqa: F401
        alpaca,
        apibench,
        dolly,
        moderation,
        openai_messages,
        preference_sft,
        pubmedqa,
        sharegpt,
    )

    # document formats (pretraining sources), data transforms, data builds
    from herd.data import documents, transforms  # noqa: F401
    from herd.data.builds.selfinstruct import build  # noqa: F401

    # stage configs (sft and pretrain are in herd.core.recipe)
    from herd.stages import configs  # noqa: F401

    # evaluations (each imports its model code when it runs)
    from herd.evals import apibench as apibench_eval, builtin, chat, code, guard, medical, reward_win_rate  # noqa: F401


def load() -> None:
    """Every plugin: the configs and the stages' run functions."""
    load_configs()
    from herd.stages import dpo, ppo, pretrain, rejection_sampling, reward_model, sft  # noqa: F401
