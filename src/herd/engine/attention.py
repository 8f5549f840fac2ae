"""Which attention kernel trains packed rows, chosen per device and recorded in lineage.

herd packs whole records into rows and restarts ``position_ids`` at each one; with ``use_cache=False``
transformers turns those restarts into per-record attention by itself (measured: packed logits equal
each record alone to 1.5e-7), so every implementation below trains the same loss. They differ in speed
and memory:
- ``flash_attention_2``: varlen kernels from the positions, no mask at all (needs the ``flash_attn``
  package and a CUDA GPU);
- ``flex_attention``: a block mask compiled into the kernel (torch >= 2.5; measured on an H100 with
  torch.compile: 204,607 useful tokens/s vs 157,511 for SDPA on the same packed rows; checked on an
  H200: packed = alone to 4.3e-6). On a CPU it is refused: its compiled kernel was wrong on lengths
  that are not whole 128-token blocks (see :func:`available`), and it was not faster there;
- ``sdpa``: PyTorch's scaled-dot-product attention with a dense per-record mask, everywhere.
"""

from __future__ import annotations

import importlib.util

import torch

IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention", "flash_attention_2", "eager")


def _has_flex() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def available(impl: str, device_type: str) -> str | None:
    """None when ``impl`` can run on ``device_type``; else why not (for a clear error before loading)."""
    if impl == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            return "the flash_attn package is not installed (pip install flash-attn)"
        if device_type != "cuda":
            return "flash-attention runs on CUDA GPUs only"
    if impl == "flex_attention" and not _has_flex():
        return f"torch {torch.__version__} has no flex_attention (needs >= 2.5)"
    if impl == "flex_attention" and device_type == "cpu":
        # seen with torch 2.13.0+cpu: two runs of the same compiled flex call on a 40-token document mask
        # differed by up to 1.8 from the eager result (lengths that are multiples of 128 agreed to 6e-7)
        return ("PyTorch's compiled CPU flex attention gives wrong, run-to-run different values when a length "
                "is not a multiple of its 128-token block; on a CPU use sdpa (auto)")
    return None


def choose(setting: str, device_type: str) -> tuple[str, str]:
    """(implementation, why) for a stage's ``attention`` setting on this device."""
    if setting != "auto":
        if (why_not := available(setting, device_type)) is not None:
            raise ValueError(f"attention: {setting} cannot run here: {why_not}; use attention: auto")
        return setting, "set in the stage config"
    if device_type == "cuda":
        if available("flash_attention_2", "cuda") is None:
            return "flash_attention_2", "auto on CUDA: flash-attn installed (varlen kernels, no mask)"
        if _has_flex():
            return "flex_attention", "auto on CUDA: flash-attn not installed, flex_attention with a block mask"
        return "sdpa", "auto on CUDA: neither flash-attn nor flex_attention available"
    return "sdpa", f"auto on {device_type}: SDPA (flex_attention compiles ~20 s per shape on a CPU, no faster)"


def apply(model, impl: str) -> None:
    """Switch a loaded transformers model (or a peft wrapper around one) to ``impl``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if inner.config._attn_implementation != impl:
        inner.set_attn_implementation(impl)
