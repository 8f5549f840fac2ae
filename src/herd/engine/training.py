"""The training engine: :func:`optimise` is the one loop of every gradient stage (sft and pretrain through
:func:`train`'s masked causal-LM step, the reward model and DPO through herd.engine.pair_loop's item step).

One plain loop over transformers' ``LlamaForCausalLM`` (the measured baseline for this field's tools is
TRL's SFTTrainer at ~107 useful tokens/s on 2 CPU cores; see bench/sft_throughput.py). Why it is fast:
- records are packed into fixed rows without cross-contamination (see :mod:`herd.data.packing`);
- the LM head and the cross-entropy run only on positions that carry a label, not on every prompt
  token (the 49K-wide vocabulary projection is ~20 % of a 135M model's forward);
- bf16 autocast on CPUs with native bf16 and on GPUs.
Why it is exact:
- a global batch is a fixed set of EXAMPLES (the paper's batch size), packed into rows only for
  compute; the loss is the sum over trained tokens divided by the trained tokens of the whole global
  batch, so packing, micro-batching and the number of processes do not change the gradient;
- the data order is a function of the seed, and checkpoints (written atomically every N steps) hold
  weights, optimizer, scheduler position and RNG state, so a run killed with -9 and resumed reaches
  the same weights as an uninterrupted one.
The same loop runs under ``torchrun`` (DDP by default, FSDP2 with ``fsdp=True``; gloo on CPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from herd.core.machine import native_bf16
from herd.core.phases import current_rss_mb, process_peak_mb, record, set_mmap_threshold, trim_heap
from herd.core.progress import Progress
from herd.data.packing import Batch, make_batch
from herd.data.tokenize import Tokenized
from herd.engine.compiling import compiled_layers, should_compile
from herd.engine.cross_entropy import linear_cross_entropy
from herd.engine.reporting import log_step
from herd.templates import IGNORE_INDEX


@dataclass
class LoopConfig:
    """The optimisation settings the loop needs (stages map their pydantic config onto this)."""

    lr: float = 2e-5
    epochs: float = 1.0
    max_steps: int | None = None
    global_batch: int = 16  # examples per optimizer step (the paper's batch size)
    micro_batch_rows: int = 4  # packed rows per forward/backward
    row_len: int = 512
    pack: bool = True
    micro_batch: int = 4  # items per forward/backward, for item losses (reward model, DPO pairs)
    warmup_ratio: float = 0.03
    min_warmup_steps: int = 0  # warmup lasts at least this many steps (Llama 2's reward model: 5)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    log_every: int = 1
    fsdp: bool = False
    gradient_checkpointing: bool = False
    progress: bool = True
    compile: str = "auto"  # auto | on | off: decoder layers through torch.compile (engine/compiling.py)
    activation_budget: float = 1.0  # compiled layers: share of activations kept, the rest recomputed
    optimizer_state: str = "fp32"  # fp32 | bf16: AdamW's moments (bf16: stochastic rounding, −4 B/param)
    heap_mmap_threshold_mb: int = 0  # glibc's M_MMAP_THRESHOLD for the run (0: its adaptive default)


@dataclass
class LoopResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    tokens: int = 0
    trained_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# -- distributed helpers --------------------------------------------------------------------------

def dist_env() -> tuple[int, int]:
    """(rank, world) from torchrun's variables, initialising the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_precision(precision: str) -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto`` takes bf16 where the hardware does it natively."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # AVX512 alone emulates bf16 (measured 4x SLOWER than fp32 here); only native bf16 pays off. An
    # instruction-set cap (ATEN_CPU_CAPABILITY=avx2, bench/as-avx2) hides it as an AVX2 CPU lacks it.
    return torch.bfloat16 if native_bf16() else None


def autocast(precision: str):
    """The autocast context of ``precision`` on this device (bf16 where it resolves to it, else a no-op):
    for code that must compute as training does (DPO's reference log-probs) or in the stage's chosen
    arithmetic (rejection sampling's scoring)."""
    amp = resolve_precision(precision)
    return torch.autocast(device().type, dtype=amp or torch.float32, enabled=amp is not None)


def arithmetic(precision: str) -> str:
    """What ``precision`` computes on this machine, as a stage's lineage records it: ``bf16`` (autocast) or
    ``fp32``. ``auto`` differs between machines, and a stage's folder hash names its settings, not this."""
    return "bf16" if resolve_precision(precision) is not None else "fp32"


def arithmetic_record(cfg) -> dict:
    """A stage config's ``arithmetic`` (and ``sampling_arithmetic``/``scoring_arithmetic`` where it samples
    and scores) on this machine: what its lineage records and its scorecard lists. A stage that trains
    through a nested SFT (rejection sampling) records that SFT's."""
    out = {}
    precision = getattr(cfg, "precision", None) or getattr(getattr(cfg, "sft", None), "precision", None)
    if precision:
        out["arithmetic"] = arithmetic(precision)
    if getattr(cfg, "sample_precision", None):
        out["sampling_arithmetic"] = arithmetic(cfg.sample_precision)
    if getattr(cfg, "score_precision", None):
        out["scoring_arithmetic"] = arithmetic(cfg.score_precision)
    return out


# -- the loss: LlamaForCausalLM's own modules, LM head only where a label is -------------------------

def causal_lm(model: nn.Module) -> nn.Module:
    """The ``LlamaForCausalLM`` inside a peft wrapper (or the model itself)."""
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


class MaskedLMLoss(nn.Module):
    """Sum of token cross-entropies over labelled positions (labels are pre-shifted by the packer).

    Wrapping the loss in a module lets DDP/FSDP2 see one forward per micro-batch."""

    def __init__(self, model: nn.Module, chunked: bool = True):
        super().__init__()
        self.model = model
        self.chunked = chunked  # the LM head + loss in chunks (engine/cross_entropy.py); False: the plain path
        self.fused = fused_loss_kernel() if chunked else None  # Liger's Triton kernel on CUDA when installed

    def forward(self, input_ids, position_ids, labels) -> torch.Tensor:
        lm = causal_lm(self.model)
        hidden = lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        sel = labels != IGNORE_INDEX
        if self.chunked and type(lm.lm_head) is nn.Linear and lm.lm_head.bias is None:
            if self.fused is not None and hidden.is_cuda:
                return self.fused(lm.lm_head.weight, hidden[sel], labels[sel])
            return linear_cross_entropy(hidden[sel], lm.lm_head.weight, labels[sel])
        logits = lm.lm_head(hidden[sel])
        return nn.functional.cross_entropy(logits.float(), labels[sel], reduction="sum")


def fused_loss_kernel():
    """Liger-Kernel's fused linear cross-entropy (sum over positions) when it is installed and a GPU is
    there; None otherwise: herd's chunked version (engine/cross_entropy.py) computes the same loss."""
    if not torch.cuda.is_available():
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def loss_kernel_name() -> str:
    return "liger fused linear cross-entropy" if fused_loss_kernel() is not None else "herd chunked linear cross-entropy"


# -- the plan: which examples form each optimizer step ---------------------------------------------

def plan_steps(n_examples: int, cfg: LoopConfig) -> list[list[int]]:
    """Example indices of every optimizer step, a pure function of the seed (so resume is exact)."""
    steps: list[list[int]] = []
    full_epochs = math.ceil(cfg.epochs)
    for epoch in range(full_epochs):
        g = torch.Generator().manual_seed(cfg.seed + epoch)
        order = torch.randperm(n_examples, generator=g).tolist()
        if epoch + 1 > cfg.epochs:  # fractional last epoch
            order = order[: int(round((cfg.epochs - epoch) * n_examples))]
        for i in range(0, len(order), cfg.global_batch):
            steps.append(order[i:i + cfg.global_batch])
    if cfg.max_steps is not None:
        steps = steps[: cfg.max_steps]
    return steps


def lr_at(step: int, total: int, cfg: LoopConfig) -> float:
    """Linear warmup over ``max(min_warmup_steps, ceil(warmup_ratio·total))`` steps, then cosine decay to
    ``min_lr_ratio·lr`` (HF's cosine schedule when 0; Llama 2's reward model: 3 % but at least 5, to 10 %)."""
    warm = min(total, max(cfg.min_warmup_steps, int(math.ceil(cfg.warmup_ratio * total))))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


TRIM = 16  # row widths are multiples of this (tensor-core friendly; fewer shapes for compiled layers)


def row_width(items: list[Tokenized], cfg: LoopConfig, step: int = TRIM) -> int:
    """The narrowest row width (a multiple of TRIM, at most ``row_len``) into which best-fit packs the step
    in as few rows as ``row_len`` would. A step's examples are packed only among themselves (the batch is
    the paper's), so rows of ``row_len`` leave the step's remainder as padding in its last row: Alpaca's demo
    records at 2,048 tokens and 16 per step filled 77 % of the computed positions; evened-out rows, 98 %.
    Compiled layers get coarser widths (``step``: a quarter row), so they see a few shapes, not one per step."""
    from herd.data.packing import best_fit

    lengths = [len(x) for x in items]
    n_rows = len(best_fit(lengths, cfg.row_len))
    width = max(-(-sum(lengths) // n_rows), max(lengths))
    width = min(cfg.row_len, -(-width // step) * step)
    while width < cfg.row_len and len(best_fit(lengths, width)) > n_rows:
        width = min(cfg.row_len, width + step)
    return width


FLAT_SHAPES = 8  # flat micro-batch lengths: whole multiples of flat_quantum up to a full micro-batch


def flat_quantum(cfg: LoopConfig) -> int:
    """The length step of flat micro-batches: an eighth of a full one (``micro_batch_rows * row_len``),
    in whole flex-attention blocks of 128, so compiled layers meet at most FLAT_SHAPES shapes."""
    return -(-cfg.micro_batch_rows * cfg.row_len // (FLAT_SHAPES * 128)) * 128


def flatten(full: Batch, rows: list[int], fill: list[int], quantum: int, pad_id: int) -> Batch:
    """The given rows' records laid end to end in ONE row (``[1, L]``), as flash-attention's varlen and
    flex attention's document mask want them: positions still restart per record, so no record sees
    another, and rows' pad tails are dropped. ``L`` is the real tokens rounded up to ``quantum``; the pad
    tail is a record of its own, as in packed rows."""
    n = sum(fill[r] for r in rows)
    length = max(quantum, -(-n // quantum) * quantum)
    ids = torch.full((1, length), pad_id, dtype=full.input_ids.dtype)
    lab = torch.full((1, length), IGNORE_INDEX, dtype=full.labels.dtype)
    pos = torch.zeros((1, length), dtype=full.position_ids.dtype)
    col = 0
    for r in rows:
        k = fill[r]
        ids[0, col:col + k], lab[0, col:col + k], pos[0, col:col + k] = (
            full.input_ids[r, :k], full.labels[r, :k], full.position_ids[r, :k])
        col += k
    pos[0, col:] = torch.arange(length - col)
    return Batch(ids, lab, pos, torch.tensor([n]), int((lab != IGNORE_INDEX).sum()))


def micro_batches(items: list[Tokenized], cfg: LoopConfig, pad_id: int, rank: int, world: int,
                  width_step: int = TRIM, quantum: int = 0) -> tuple[list[Batch], int]:
    """This rank's micro-batches for one step, and the trained-token count of the WHOLE step. With a
    ``quantum`` (flex or flash attention on a GPU) each micro-batch is one flat row (:func:`flatten`)."""
    n_trained = sum(it.n_targets for it in items)
    full = make_batch(items, row_width(items, cfg, width_step) if cfg.pack else cfg.row_len, pad_id, pack=cfg.pack)
    # fullest rows first, so that a step's partly filled rows share the last micro-batch, whose columns
    # are then cut after its longest row (rounded up to TRIM tokens): the pad tail is never computed
    fill = full.row_tokens.tolist()
    rows = sorted(range(len(fill)), key=lambda r: (-fill[r], r))[rank::world]
    out = []
    for i in range(0, len(rows), cfg.micro_batch_rows):
        if quantum:
            out.append(flatten(full, rows[i:i + cfg.micro_batch_rows], fill, quantum, pad_id))
            continue
        idx = torch.tensor(rows[i:i + cfg.micro_batch_rows])
        width = min(full.input_ids.shape[1], -(-max(fill[r] for r in idx.tolist()) // width_step) * width_step)
        lab = full.labels[idx, :width]
        out.append(Batch(full.input_ids[idx, :width], lab, full.position_ids[idx, :width], full.row_tokens[idx],
                         int((lab != IGNORE_INDEX).sum())))
    return out, n_trained


# -- checkpoints ----------------------------------------------------------------------------------

def _state_dicts(model: nn.Module, opt: torch.optim.Optimizer):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_state_dict(model, opt, options=opts)


def save_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict, rank: int
                    ) -> None:
    """Weights of trainable params, optimizer and loop state; written to a temp dir and renamed."""
    msd, osd = _state_dicts(model, opt)
    if rank != 0:
        return
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, aliases = _dedupe_shared(msd)
    save_file(tensors, str(tmp / "trainable.safetensors"))
    torch.save(osd, tmp / "optimizer.pt")
    state = dict(state, rng=torch.get_rng_state().tolist(), aliases=aliases)
    (tmp / "state.json").write_text(json.dumps(state))
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt_dir.exists():
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def _dedupe_shared(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tied weights (SmolLM2's embedding = LM head) share storage; safetensors stores each once."""
    seen: dict[tuple[int, int, tuple], str] = {}
    out, aliases = {}, {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            out[k] = v.contiguous()
    return out, aliases


def load_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if not ckpt_dir.exists() and ckpt_dir.with_name(ckpt_dir.name + ".old").exists():
        ckpt_dir = ckpt_dir.with_name(ckpt_dir.name + ".old")  # killed between the two renames
    msd = load_file(str(ckpt_dir / "trainable.safetensors"))
    osd = torch.load(ckpt_dir / "optimizer.pt", weights_only=True)
    opts = StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False)
    set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd, options=opts)
    state = json.loads((ckpt_dir / "state.json").read_text())
    for alias, kept in state.pop("aliases", {}).items():
        msd[alias] = msd[kept]
    torch.set_rng_state(torch.tensor(state.pop("rng"), dtype=torch.uint8))
    return state


def find_checkpoint(run_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):
        p = run_dir / name
        if (p / "state.json").is_file():
            return p
    return None


# -- the loop -------------------------------------------------------------------------------------

def wrap_distributed(module: nn.Module, cfg: LoopConfig, world: int) -> nn.Module:
    if world == 1:
        return module
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in causal_lm(module.model).model.layers:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module)


def param_groups(params: list, weight_decay: float, **extra) -> list[dict]:
    """AdamW groups: weight decay on matrices only, never on biases and norms (one-dimensional)."""
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay, **extra},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, **extra}]


def adamw(groups: list[dict], *, state: str = "fp32", seed: int = 0, **kw) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all tensors) where every parameter is a plain CPU/CUDA tensor: on
    SmolLM2 a step took 0.09 s instead of foreach's 0.47 s and no temporary copies (foreach allocated
    ~480 MB). Sharded (FSDP2 DTensor) parameters keep ``foreach``. ``state="bf16"``: the moments in bf16
    with stochastic rounding (engine/optimizers.py), 4 bytes per parameter less."""
    from torch.distributed.tensor import DTensor

    params = [p for g in groups for p in g["params"]]
    sharded = any(isinstance(p, DTensor) for p in params)
    if state == "8bit":
        if sharded:
            raise ValueError("optimizer_state 8bit does not support FSDP-sharded parameters; use fp32")
        from herd.engine.quantized import adamw_8bit

        return adamw_8bit(groups, **kw)
    if state == "bf16":
        if sharded:
            raise ValueError("optimizer_state bf16 does not support FSDP-sharded parameters; use fp32")
        from herd.engine.optimizers import AdamWBf16Moments

        return AdamWBf16Moments(groups, seed=seed, **kw)
    plain = not sharded and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, **kw, **({"fused": True} if plain else {"foreach": True}))


def _accumulate(loss_mod: nn.Module, mbs: list, n_trained: int, cfg: LoopConfig, pad_id: int, amp, dev,
                world: int) -> tuple[torch.Tensor, int]:
    """One optimizer step's forwards and backwards over its micro-batches; returns the summed loss and
    tokens. Every rank runs the same number of forwards (an idle one joins with a zero-weight pad row),
    and gradients are reduced only on the last (``no_sync`` before it, under DDP)."""
    n_mb = len(mbs)
    if world > 1:
        t = torch.tensor([n_mb], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        n_mb = int(t.item())
    step_loss = torch.zeros((), device=dev)
    step_tokens = 0
    for m in range(n_mb):
        if m < len(mbs):
            b = mbs[m]
            ids, pos, lab = b.input_ids.to(dev), b.position_ids.to(dev), b.labels.to(dev)
        else:
            ids = torch.full((1, 1), pad_id, device=dev)
            pos = torch.zeros((1, 1), dtype=torch.long, device=dev)
            lab = torch.full((1, 1), IGNORE_INDEX, device=dev)
        sync = m == n_mb - 1
        ctx = loss_mod.no_sync() if (world > 1 and not cfg.fsdp and not sync) else nullcontext()
        with ctx, torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss_sum = loss_mod(ids, pos, lab)
        (loss_sum * (world / max(1, n_trained))).backward()
        step_loss += loss_sum.detach()
        if m < n_mb - 1 and cfg.heap_mmap_threshold_mb:
            trim_heap()  # low-memory runs: the next micro-batch starts from live tensors, not freed pages
        if m < len(mbs):
            step_tokens += mbs[m].n_tokens
    return step_loss, step_tokens


def _sum_over_ranks(step_loss: torch.Tensor, step_tokens: int, dev, world: int) -> tuple[float, int]:
    """The step's loss sum and token count over every rank (as they are, in one process)."""
    if world == 1:
        return float(step_loss), step_tokens
    stats = torch.tensor([float(step_loss), float(step_tokens)], device=dev)
    dist.all_reduce(stats)
    return float(stats[0]), int(stats[1])


@dataclass
class StepOut:
    """One optimizer step's forwards and backwards, summed over ranks: the loss per trained unit, the
    step's own metrics fields, and the tokens it processed (for the throughput; None for item losses)."""

    loss: float
    fields: dict = field(default_factory=dict)
    tokens: int | None = None


def optimise(module: nn.Module, cfg: LoopConfig, run_dir: Path, total: int, step_fn: Callable[[int], StepOut], *,
             resume: bool = False, desc: str = "train", on_log: Callable[[dict], None] | None = None) -> LoopResult:
    """THE training loop of every gradient stage (sft, pretrain, reward model, DPO): AdamW without decay on
    one-dimensional tensors, linear warmup and cosine decay, gradient clipping, ``metrics.jsonl``, atomic
    checkpoints every ``checkpoint_every`` steps with exact resume, progress. ``step_fn(step)`` runs the
    step's forwards and backwards: that is where a causal LM, Bradley-Terry or DPO loss differ."""
    rank, world = dist_env()
    if cfg.heap_mmap_threshold_mb:
        set_mmap_threshold(cfg.heap_mmap_threshold_mb)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = adamw(param_groups(params, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                state=cfg.optimizer_state, seed=cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    start, history = 0, []
    if resume and (found := find_checkpoint(run_dir)) is not None:
        state = load_checkpoint(found, module, opt)
        start, history = state["step"], state["history"]
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:  # rewritten from the checkpointed history: no duplicate lines after a resume
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    kill_after = int(os.environ.get("HERD_TEST_KILL_AFTER_STEP", "0"))  # tests: kill -9 at a known point
    bar = Progress(total=total, initial=start, desc=desc, unit="step", enabled=cfg.progress and rank == 0)
    tokens = 0
    t0 = time.perf_counter()
    for step in range(start, total):
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        out = step_fn(step)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)) if cfg.grad_clip else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        trim_heap()  # the step's freed activations back to the OS: RSS stays flat over a run
        elapsed = time.perf_counter() - t0
        rec = {"step": step + 1, "epoch": round((step + 1) / total * cfg.epochs, 4), "loss": out.loss, "lr": lr,
               "grad_norm": grad_norm, **out.fields}
        if out.tokens is not None:
            tokens += out.tokens
            rec["tokens_per_s"] = tokens / elapsed
        rec["elapsed"] = round(elapsed, 3)
        # where a run's peak memory was reached, step by step (the process's high-water mark so far)
        rec["rss_mb"], rec["peak_rss_mb"] = round(current_rss_mb()), round(process_peak_mb())
        if params[0].is_cuda:
            rec["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        history.append(rec)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log_step(rec)  # --report-to trackers get the row metrics.jsonl just got
            if on_log:
                on_log(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}",
                        **({"tok_s": f"{rec['tokens_per_s']:.0f}"} if out.tokens is not None else {}))
        bar.update(1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            save_checkpoint(run_dir / "checkpoint", module, opt, {"step": step + 1, "history": history}, rank)
            if kill_after and step + 1 >= kill_after and rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    seconds = time.perf_counter() - t0
    if world > 1:
        dist.barrier()
    return LoopResult(steps=total, history=history, tokens=tokens, seconds=seconds)


def train(model: nn.Module, data: list[Tokenized], cfg: LoopConfig, run_dir: str | Path, *, pad_id: int,
          resume: bool = False, on_log: Callable[[dict], None] | None = None) -> LoopResult:
    """Train ``model`` in place on ``data`` with the masked causal-LM loss (sft, pretrain); metrics go to
    ``run_dir/metrics.jsonl``."""
    rank, world = dist_env()
    dev = device()
    torch.manual_seed(cfg.seed)
    from herd.engine.quantized import is_quantized

    if not is_quantized(model):  # a 4-bit model was placed when it loaded (and cannot be moved)
        model.to(dev)
    model.train()
    if cfg.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss_mod = wrap_distributed(MaskedLMLoss(model), cfg, world)
    amp = resolve_precision(cfg.precision)
    plan = plan_steps(len(data), cfg)
    trained = 0
    compile_on, why = should_compile(cfg.compile, steps=len(plan), world=world,
                                     gradient_checkpointing=cfg.gradient_checkpointing, device=dev)
    budget = cfg.activation_budget
    recompute_eager = budget < 1 and not compile_on and not cfg.gradient_checkpointing
    if recompute_eager:
        # eager layers cannot keep a share: recompute them all (transformers' per-layer checkpointing)
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        why += f"; activation budget {budget:g} without compile: gradient checkpointing"
    if cfg.progress and rank == 0 and cfg.compile != "off":
        kept = f", {budget:.0%} of the activations kept, the rest recomputed" if compile_on and budget < 1 else ""
        print(f"[train] compile: {'on' if compile_on else 'off'} ({why}{kept})", flush=True)

    width_step = max(TRIM, cfg.row_len // 4) if compile_on else TRIM  # few shapes for compiled layers
    # flex/flash attention on a GPU: flat micro-batches, one shape per eighth of a full one. Rows of
    # varying count and width met a new compiled shape (a 6-20 s recompile on an H200) every few steps,
    # and dynamo's recompile limit (8) is then soon hit.
    impl = getattr(causal_lm(model).config, "_attn_implementation", None)
    quantum = flat_quantum(cfg) if (dev.type == "cuda" and cfg.pack and world == 1
                                    and impl in ("flex_attention", "flash_attention_2")) else 0
    if cfg.progress and rank == 0 and quantum:
        print(f"[train] layout: flat micro-batches of up to {cfg.micro_batch_rows * cfg.row_len} tokens "
              f"in steps of {quantum} ({impl})", flush=True)

    def step_fn(step: int) -> StepOut:
        nonlocal trained
        mbs, n_trained = micro_batches([data[i] for i in plan[step]], cfg, pad_id, rank, world, width_step,
                                       quantum)
        step_loss, step_tokens = _accumulate(loss_mod, mbs, n_trained, cfg, pad_id, amp, dev, world)
        computed = sum(b.input_ids.numel() for b in mbs)  # this rank's row positions, padding included
        row_use = sum(b.n_tokens for b in mbs) / max(1, computed)
        step_loss_val, step_tokens = _sum_over_ranks(step_loss, step_tokens, dev, world)
        trained += n_trained
        return StepOut(loss=step_loss_val / max(1, n_trained),
                       fields={"tokens": step_tokens, "trained_tokens": n_trained, "row_use": round(row_use, 4)},
                       tokens=step_tokens)

    with record("train loop"), compiled_layers(causal_lm(model).model.layers, compile_on, budget,
                                               shapes=FLAT_SHAPES if quantum else 0):
        result = optimise(loss_mod, cfg, Path(run_dir), len(plan), step_fn, resume=resume, on_log=on_log)
    if recompute_eager:
        causal_lm(model).gradient_checkpointing_disable()
    result.trained_tokens = trained
    return result


def full_state_dict(model: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The full (gathered) model state — plain, DDP and FSDP2 models; a collective under torchrun. On
    rank 0's CPU only (other ranks get an empty dict), or with ``all_ranks`` on every rank's CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not all_ranks:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {k: v.detach().cpu() for k, v in state.items()}


def save_loss_png(history: list[dict], path: str | Path, title: str = "training loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (trained tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
