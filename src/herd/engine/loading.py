"""A training stage's model and loop settings, from its config: which weights load in which precision,
which attention kernel runs, the adapter, and the engine's loop settings. Shared by the stage kinds and
by the memory plan's measurement (engine/memory_plan.py)."""

from __future__ import annotations

from herd.base import BaseRef, load_model
from herd.core.recipe import TrainStage
from herd.engine.lora import apply_lora
from herd.engine.training import LoopConfig


def loop_config(cfg: TrainStage, progress: bool = True) -> LoopConfig:
    """The engine's loop settings from a stage's (field names differ: ``max_len`` is ``row_len``)."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps, global_batch=cfg.global_batch,
                      micro_batch_rows=cfg.micro_batch_rows, row_len=cfg.max_len, pack=cfg.pack,
                      warmup_ratio=cfg.warmup_ratio, min_lr_ratio=cfg.min_lr_ratio,
                      weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                      grad_clip=cfg.grad_clip,
                      seed=cfg.seed, precision=cfg.precision, checkpoint_every=cfg.checkpoint_every,
                      fsdp=cfg.fsdp, gradient_checkpointing=cfg.gradient_checkpointing, progress=progress,
                      compile=cfg.compile, activation_budget=cfg.activation_budget,
                      optimizer_state=cfg.optimizer_state, heap_mmap_threshold_mb=cfg.heap_mmap_threshold_mb)


def load_for_training(parent: BaseRef, cfg: TrainStage) -> tuple:
    """The stage's model before any adapter, and how it runs: (model, record for lineage).

    Full fine-tuning keeps fp32 master weights (bf16 autocast computes where the hardware has it); LoRA on a
    CUDA GPU holds the frozen base in bf16; QLoRA in 4-bit NF4 with double quantisation (bitsandbytes). The
    attention kernel is chosen per device (engine/attention.py)."""
    import torch

    from herd.engine import attention
    from herd.engine.training import device, resolve_precision

    dev = device()
    impl, why = attention.choose(cfg.attention, dev.type)
    amp = resolve_precision(cfg.precision)
    if cfg.method == "qlora":
        from herd.engine.quantized import load_nf4

        model = load_nf4(parent, compute_dtype=amp or torch.float32, device=dev)
        weights = "nf4 (double quantisation), compute " + str(amp or torch.float32).removeprefix("torch.")
    else:
        frozen_bf16 = cfg.method == "lora" and dev.type == "cuda" and amp is torch.bfloat16
        model = load_model(parent, dtype=torch.bfloat16 if frozen_bf16 else None)
        weights = "bf16 frozen base" if frozen_bf16 else "fp32"
    attention.apply(model, impl)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (fp32 runs, the loss head) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    return model, {"device": dev.type, "attention": impl, "attention_why": why, "weights": weights,
                   "autocast": str(amp).removeprefix("torch.") if amp else "off"}


def add_adapter(model, cfg: TrainStage):
    """LoRA (and QLoRA) through peft with the stage's seed (LoRA's A matrices are random); full: unchanged."""
    if cfg.method == "full":
        return model
    import torch

    torch.manual_seed(cfg.seed)
    return apply_lora(model, cfg.lora)


def merge_into_full_precision(model, parent: BaseRef, cfg: TrainStage, prepare_plain=None):
    """A QLoRA-trained adapter merged into the parent's full-precision weights (never into the 4-bit copy,
    whose rounding would land in the artifact): the trained tensors are copied by name onto a plain model
    wrapped the same way, then merged."""
    trained = {n: p.detach().cpu().float() for n, p in model.named_parameters() if p.requires_grad}
    plain = load_model(parent)
    if prepare_plain is not None:
        prepare_plain(plain)
    plain = add_adapter(plain, cfg)
    missing = [n for n in trained if n not in dict(plain.named_parameters())]
    if missing:
        raise RuntimeError(f"qlora merge: {len(missing)} trained tensors have no full-precision twin: {missing[:3]}")
    plain.load_state_dict(trained, strict=False)
    return plain.merge_and_unload()
