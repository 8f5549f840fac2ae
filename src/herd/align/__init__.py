"""Alignment building blocks for the Llama-2-Chat pipeline (dossier §5.2 steps 2-5) and DPO.

- :mod:`herd.align.preference`: preference pairs / labelled replies from LLaMA-Factory, HH-RLHF,
  Stack Exchange paired and KTO files, with a deterministic held-out split;
- :mod:`herd.engine.losses`: DPO, Bradley-Terry (+ Llama 2 margin), the helpfulness/safety reward
  combination and PPO reward shaping, as pure tensor functions;
- :mod:`herd.engine.logprobs`: reply log-probs through a herd template (only reply tokens counted);
- stages, each ``run(cfg, parent, template, out, *, name, resume, recipe, progress, workspace)
  -> (artifact path, summary)``: ``reward_model`` (:mod:`herd.align.reward`), ``rejection_sampling``
  (:mod:`herd.align.rejection`), ``dpo`` (:mod:`herd.align.dpo`), ``ppo`` (:mod:`herd.align.ppo`).

Each stage module registers its ``run(cfg, ctx)`` (herd.core.registry.STAGES); the configs
(:mod:`herd.align.config`, registered in STAGE_CONFIGS) import no torch.
"""
