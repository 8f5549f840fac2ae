"""One optimisation loop for the pairwise stages (reward model, DPO): items in, a loss per item out.

It reuses herd's SFT engine where the mechanics are the same (``plan_steps``: the data order is a
function of the seed; ``save_checkpoint``/``load_checkpoint``: weights, optimizer, loop state and RNG
written atomically), so a run killed with SIGKILL and resumed reaches the same weights as an
uninterrupted one. What differs from SFT is the unit: a step is ``global_batch`` ITEMS (pairs, as the
papers count batches) and the step loss is the mean over them, whatever the micro-batching.
Under torchrun (DDP, or FSDP2 with ``fsdp``) each rank takes every ``world``-th item of a step and the
gradients are averaged, so the step is the same update a single process computes; ranks with fewer
micro-batches run zero-weight forwards so every rank joins every collective.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from herd.core.progress import Progress
from herd.engine.distributed import all_sum
from herd.engine.training import (
    LoopConfig,
    LoopResult,
    device,
    dist_env,
    find_checkpoint,
    load_checkpoint,
    plan_steps,
    resolve_precision,
    save_checkpoint,
    wrap_distributed,
)

# loss_fn(item indices) -> (sum of per-item losses, {stat name: sum over the items})
LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class PairLoopConfig:
    lr: float = 1e-5
    epochs: float = 1.0
    max_steps: int | None = None
    global_batch: int = 64  # items (pairs) per optimizer step
    micro_batch: int = 4  # items per forward/backward
    warmup_ratio: float = 0.03
    min_warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    seed: int = 42
    precision: str = "auto"
    checkpoint_every: int = 0
    fsdp: bool = False
    progress: bool = True


class ItemLoss(nn.Module):
    """``loss_fn`` as a module over ``model``, so DDP/FSDP2 see one forward per micro-batch (the function
    may call any of the model's submodules); its state dict is the model's, prefixed ``model.``."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, idx: list[int]):
        return self.loss_fn(idx)


def autocast(precision: str):
    """The loop's autocast context (bf16 where ``precision`` resolves to it, else a no-op), for code that
    must compute exactly as training does (DPO's reference log-probs)."""
    amp = resolve_precision(precision)
    return torch.autocast(device().type, dtype=amp or torch.float32, enabled=amp is not None)


def lr_at(step: int, total: int, cfg: PairLoopConfig) -> float:
    """Linear warmup over ``max(min_warmup_steps, ceil(warmup_ratio·total))`` steps (Llama 2's RM: 3 %,
    at least 5), then cosine decay to ``min_lr_ratio·lr`` (Llama 2's RM: 10 %)."""
    warm = min(total, max(cfg.min_warmup_steps, math.ceil(cfg.warmup_ratio * total)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_items(model: nn.Module, n_items: int, loss_fn: LossFn, cfg: PairLoopConfig, run_dir: Path, *,
                resume: bool = False, desc: str = "train") -> LoopResult:
    """Train ``model`` in place; ``run_dir`` holds ``checkpoint/`` and ``metrics.jsonl``. Under torchrun
    ``model`` ends wrapped (DDP) or sharded (FSDP2): take its weights with :func:`herd.engine.training.full_state_dict`."""
    run_dir = Path(run_dir)
    rank, world = dist_env()
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = device()
    torch.manual_seed(cfg.seed)
    model.to(dev)
    model.train()
    module = wrap_distributed(ItemLoss(model, loss_fn), LoopConfig(fsdp=cfg.fsdp), world)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)
    plan = plan_steps(n_items, LoopConfig(epochs=cfg.epochs, max_steps=cfg.max_steps,
                                          global_batch=cfg.global_batch, seed=cfg.seed))
    total = len(plan)
    start, history = 0, []
    if resume and (found := find_checkpoint(run_dir)) is not None:
        state = load_checkpoint(found, module, opt)
        start, history = state["step"], state["history"]
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    kill_after = int(os.environ.get("HERD_TEST_KILL_AFTER_STEP", "0"))  # tests: kill -9 at a known point
    bar = Progress(total=total, initial=start, desc=desc, unit="step", enabled=cfg.progress and rank == 0)
    t0 = time.perf_counter()
    for step in range(start, total):
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        items = plan[step]
        mine = items[rank::world]
        # every rank runs as many forwards as the rank with the most items (rank 0)
        n_mb = math.ceil(len(items[0::world]) / cfg.micro_batch)
        step_loss, sums = 0.0, {}
        for m in range(n_mb):
            part = mine[m * cfg.micro_batch:(m + 1) * cfg.micro_batch]
            weight = world / len(items) if part else 0.0  # DDP/FSDP2 average gradients over ranks
            sync = m == n_mb - 1
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
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {"step": step + 1, "epoch": round((step + 1) / total * cfg.epochs, 4), "loss": step_loss / len(items),
               "lr": lr, "grad_norm": grad_norm, "items": len(items),
               **{k: v / len(items) for k, v in sums.items()},
               "elapsed": round(time.perf_counter() - t0, 3)}
        history.append(rec)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        bar.update(1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(run_dir / "checkpoint", module, opt, {"step": step + 1, "history": history}, rank)
            if kill_after and step + 1 >= kill_after and rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if world > 1:
        dist.barrier()
    return LoopResult(steps=total, history=history, seconds=time.perf_counter() - t0)


def pair_loop_config(cfg, progress: bool) -> PairLoopConfig:
    """A pair stage's settings (reward model, DPO: the shared ``_PairTraining`` fields) for the loop."""
    return PairLoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, global_batch=cfg.global_batch,
                          micro_batch=cfg.micro_batch, warmup_ratio=cfg.warmup_ratio,
                          min_warmup_steps=cfg.min_warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                          weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                          grad_clip=cfg.grad_clip, seed=cfg.seed, precision=cfg.precision,
                          checkpoint_every=cfg.checkpoint_every, fsdp=cfg.fsdp, progress=progress)
