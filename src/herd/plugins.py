"""The plugin list: the one module that imports every data reader, document format, data build, data
transform and evaluation, so that each registers itself (herd.core.registry).

A new plugin is its own module plus one line here. Registries load this list on their first lookup.
"""

from __future__ import annotations


def load() -> None:
    # data formats (herd.data.load_examples)
    # stage kinds: configs (torch-free) and run functions
    from herd.align import config, dpo, ppo, rejection, reward  # noqa: F401

    # evaluations
    from herd.align import evals as align_evals  # noqa: F401
    from herd.chat_eval import evals as chat_evals  # noqa: F401
    from herd.code import evals as code_evals  # noqa: F401

    # document formats (pretraining sources), data builds, data transforms
    from herd.data import alpaca, documents, dolly, openai_messages, preference_sft, sharegpt, transforms  # noqa: F401  # noqa: F401
    from herd.evals import builtin  # noqa: F401
    from herd.gorilla import eval as gorilla_eval  # noqa: F401
    from herd.gorilla import reader  # noqa: F401  (apibench)
    from herd.guard import evaluate as guard_eval  # noqa: F401
    from herd.guard import moderation  # noqa: F401  (moderation)
    from herd.medical import evals as medical_evals  # noqa: F401
    from herd.selfinstruct import build  # noqa: F401
    from herd.stages import pretrain, sft  # noqa: F401
