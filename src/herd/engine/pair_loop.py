"""The pairwise stages' step (reward model, DPO) on the one training loop: items in, a loss per item out.

The loop, its schedule, optimiser and atomic checkpoints are :func:`herd.engine.training.optimise`'s (the
data order is a function of the seed; a run killed with SIGKILL and resumed reaches the same weights as
an uninterrupted one). What differs from SFT is the unit: a step is ``global_batch`` ITEMS (pairs, as the
papers count batches) and the step loss is the mean over them, whatever the micro-batching.
Under torchrun (DDP, or FSDP2 with ``fsdp``) each rank takes every ``world``-th item of a step and the
gradients are averaged, so the step is the same update a single process computes; ranks with fewer
micro-batches run zero-weight forwards so every rank joins every collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from herd.engine.distributed import all_sum
from herd.engine.training import (
    LoopConfig,
    LoopResult,
    StepOut,
    autocast,
    causal_lm,
    device,
    dist_env,
    optimise,
    plan_steps,
    wrap_distributed,
)

# loss_fn(item indices) -> (sum of per-item losses, {stat name: sum over the items})
LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]]


class ItemLoss(nn.Module):
    """``loss_fn`` as a module over ``model``, so DDP/FSDP2 see one forward per micro-batch (the function
    may call any of the model's submodules); its state dict is the model's, prefixed ``model.``."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, idx: list[int]):
        return self.loss_fn(idx)


def micro_batches(items: list[int], micro_batch: int, rank: int, world: int) -> list[list[int]]:
    """This rank's micro-batches of one step's ``items``: every rank runs as many forwards as the rank
    with the most items (rank 0), so an idle rank gets empty parts (run on ``items[:1]`` with weight 0)."""
    mine = items[rank::world]
    n_mb = math.ceil(len(items[0::world]) / micro_batch)
    return [mine[m * micro_batch:(m + 1) * micro_batch] for m in range(n_mb)]


def forward_layouts(n_items: int, cfg: LoopConfig) -> list[tuple[int, ...]]:
    """Every item group this rank's forwards will see over the whole run, in order (idle parts as the
    loop runs them). A quantity that must match training bit for bit, as DPO's reference log-probs must
    at step 0, is computed over these same groups: in bf16 a sequence's log-prob depends on what it is
    batched and padded with (measured on SmolLM2: up to 0.95 nats apart)."""
    rank, world = dist_env()
    return [tuple(part or items[:1]) for items in plan_steps(n_items, cfg)
            for part in micro_batches(items, cfg.micro_batch, rank, world)]


def train_items(model: nn.Module, n_items: int, loss_fn: LossFn, cfg: LoopConfig, run_dir: Path, *,
                resume: bool = False, desc: str = "train") -> LoopResult:
    """Train ``model`` in place on ``n_items`` items (pairs) with ``loss_fn``, through the one training
    loop (:func:`herd.engine.training.optimise`); ``run_dir`` holds ``checkpoint/`` and ``metrics.jsonl``.
    Under torchrun ``model`` ends wrapped (DDP) or sharded (FSDP2): take its weights with
    :func:`herd.engine.training.full_state_dict`."""
    rank, world = dist_env()
    torch.manual_seed(cfg.seed)
    model.to(device())
    model.train()
    if cfg.gradient_checkpointing:  # the policy or reward model only: a reference model runs without a graph
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    module = wrap_distributed(ItemLoss(model, loss_fn), cfg, world)
    plan = plan_steps(n_items, cfg)

    def step_fn(step: int) -> StepOut:
        items = plan[step]
        parts = micro_batches(items, cfg.micro_batch, rank, world)
        step_loss, sums = 0.0, {}
        for m, part in enumerate(parts):
            weight = world / len(items) if part else 0.0  # DDP/FSDP2 average gradients over ranks
            sync = m == len(parts) - 1
            ctx = module.no_sync() if (world > 1 and not cfg.fsdp and not sync) else nullcontext()
            with ctx, autocast(cfg.precision):
                loss_sum, stats = module(part or items[:1])
            (loss_sum * weight).backward()
            for k, v in stats.items():  # an idle rank adds zeros (the same keys on every rank)
                sums[k] = sums.get(k, 0.0) + (float(v) if part else 0.0)
            if part:
                step_loss += float(loss_sum.detach())
        if world > 1:
            keys = sorted(sums)
            step_loss, *vals = all_sum([step_loss, *(sums[k] for k in keys)])
            sums = dict(zip(keys, vals))
        return StepOut(loss=step_loss / len(items),
                       fields={"items": len(items), **{k: v / len(items) for k, v in sums.items()}})

    result = optimise(module, cfg, Path(run_dir), len(plan), step_fn, resume=resume, desc=desc)
    if cfg.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_disable()
    result.tokens = 0
    return result


def pair_loop_config(cfg, progress: bool) -> LoopConfig:
    """A pair stage's settings (reward model, DPO: the shared ``_PairTraining`` fields) for the loop. With
    ``shared_prompt`` the stage checkpoints the layers itself (:func:`herd.engine.shared_prefix.rows_after_prompt`):
    the loop's, transformers' checkpointing, would drop the prompt's cache."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, global_batch=cfg.global_batch,
                          micro_batch=cfg.micro_batch, warmup_ratio=cfg.warmup_ratio,
                          min_warmup_steps=cfg.min_warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                          weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                          grad_clip=cfg.grad_clip, seed=cfg.seed, precision=cfg.precision,
                          checkpoint_every=cfg.checkpoint_every, fsdp=cfg.fsdp, progress=progress,
                          gradient_checkpointing=cfg.gradient_checkpointing and not cfg.shared_prompt,
                          heap_mmap_threshold_mb=cfg.heap_mmap_threshold_mb)
