"""QLoRA's frozen base and the 8-bit optimizer, both from bitsandbytes (the `qlora` extra).

QLoRA (Dettmers et al., 2023): the base's linear layers stored as 4-bit NormalFloat with double
quantisation, computed in bf16, with a LoRA adapter trained on top: about 0.55 bytes per frozen parameter
instead of 2 (bf16) or 4 (fp32). Embeddings, norms and the LM head stay in full precision (transformers'
bitsandbytes integration skips the head; peft's ``prepare_model_for_kbit_training`` upcasts the norms).
bitsandbytes >= 0.46 also runs on CPUs (it picks its AVX-512 kernels at run time, so an AVX2 machine works).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch


def missing() -> str | None:
    """None when bitsandbytes can be imported; else how to get it (checked before any model loads)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed: pip install 'herd[qlora]' (or pip install bitsandbytes)"
    return None


def load_nf4(ref, *, compute_dtype: torch.dtype, device: torch.device):
    """transformers' ``LlamaForCausalLM`` with its linear layers in 4-bit NF4, ready for a LoRA adapter."""
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    from herd.core.phases import record

    if (why := missing()) is not None:
        raise RuntimeError(why)
    path = ref.path if hasattr(ref, "path") else Path(ref)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=compute_dtype)
    with record(f"load model {path.name} (nf4)"):
        model = LlamaForCausalLM.from_pretrained(str(path), quantization_config=q, dtype=compute_dtype,
                                                 device_map={"": str(device)})
    # norms to fp32 and input gradients on; checkpointing is herd's own switch, not peft's
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def is_quantized(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(inner, "is_loaded_in_4bit", False) or getattr(inner, "is_loaded_in_8bit", False))


def adamw_8bit(groups: list[dict], **kw) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW with blockwise 8-bit moments (2 bytes per parameter instead of 8)."""
    if (why := missing()) is not None:
        raise RuntimeError(f"optimizer_state 8bit: {why}")
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(groups, **kw)
