"""Alignment building blocks for the Llama-2-Chat pipeline (dossier §5.2 steps 2-5) and DPO.

- :mod:`herd.align.preference`: preference pairs / labelled replies from LLaMA-Factory, HH-RLHF,
  Stack Exchange paired and KTO files, with a deterministic held-out split;
- :mod:`herd.engine.losses`: DPO, Bradley-Terry (+ Llama 2 margin), the helpfulness/safety reward
  combination and PPO reward shaping, as pure tensor functions;
- :mod:`herd.engine.logprobs`: reply log-probs through a herd template (only reply tokens counted);
- stages, each ``run(cfg, parent, template, out, *, name, resume, recipe, progress, workspace)
  -> (artifact path, summary)``: ``reward_model`` (:mod:`herd.align.reward`), ``rejection_sampling``
  (:mod:`herd.align.rejection`), ``dpo`` (:mod:`herd.align.dpo`), ``ppo`` (:mod:`herd.align.ppo`).

:func:`stage_registry` maps each kind to (config class, run function) for the recipe schema and
``herd derive``; the configs (:mod:`herd.align.config`) import no torch.
"""

from __future__ import annotations

from collections.abc import Callable


def stage_registry() -> dict[str, tuple[type, Callable]]:
    """kind → (pydantic config class, run function); imports the stage modules (torch) on call."""
    from herd.align.config import DPOStage, PPOStage, RejectionSamplingStage, RewardModelStage
    from herd.align.dpo import run_dpo
    from herd.align.ppo import run_ppo
    from herd.align.rejection import run_rejection_sampling
    from herd.align.reward import run_reward_model

    return {"reward_model": (RewardModelStage, run_reward_model),
            "rejection_sampling": (RejectionSamplingStage, run_rejection_sampling),
            "dpo": (DPOStage, run_dpo),
            "ppo": (PPOStage, run_ppo)}
