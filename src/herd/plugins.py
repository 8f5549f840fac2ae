"""The plugin list: the one module that imports every data reader, document format, data build, data
transform, stage kind and evaluation, so that each registers itself (herd.core.registry).

A new plugin is its own module plus one line here. Registries load this list on their first lookup:
:func:`load_configs` for what validating a recipe needs (no torch), :func:`load` for everything.
"""

from __future__ import annotations


def load_configs() -> None:
    """The plugins a recipe is validated against; none of these modules imports torch."""
    # data formats (herd.data.load_examples)
    from herd.data import alpaca, dolly, openai_messages, preference_sft, sharegpt  # noqa: F401
    from herd.data import apibench as reader  # noqa: F401  (apibench)
    from herd.data import moderation  # noqa: F401  (moderation)

    # document formats (pretraining sources), data builds, data transforms
    from herd.data import documents, transforms  # noqa: F401
    from herd.data.builds.selfinstruct import build  # noqa: F401

    # stage configs (sft and pretrain are in herd.core.recipe)
    from herd.stages import configs as config  # noqa: F401

    # evaluations (each imports its model code when it runs)
    from herd.evals import reward_win_rate as align_evals  # noqa: F401
    from herd.evals import chat as chat_evals  # noqa: F401
    from herd.evals import code as code_evals  # noqa: F401
    from herd.evals import builtin  # noqa: F401
    from herd.evals import apibench as gorilla_eval  # noqa: F401
    from herd.evals import guard as guard_eval  # noqa: F401
    from herd.evals import medical as medical_evals  # noqa: F401


def load() -> None:
    """Every plugin: the configs and the stages' run functions."""
    load_configs()
    from herd.stages import dpo  # noqa: F401
    from herd.stages import ppo  # noqa: F401
    from herd.stages import rejection_sampling as rejection  # noqa: F401
    from herd.stages import reward_model as reward  # noqa: F401
    from herd.stages import pretrain, sft  # noqa: F401
