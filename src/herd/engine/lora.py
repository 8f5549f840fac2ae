"""LoRA through peft: the adapter herd trains when a stage says ``method: lora``."""

from __future__ import annotations


def apply_lora(model, spec):
    """Wrap ``model`` with a peft LoRA adapter of ``spec`` (r, alpha, dropout, target modules)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                            target_modules=list(spec.target_modules), task_type="CAUSAL_LM"))
