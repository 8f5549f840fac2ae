"""LoRA through peft: the adapter herd trains when a stage says ``method: lora``.

One change to peft's adapter, for speed: its input dropout. peft draws a Bernoulli mask per element
(``nn.Dropout``), and on a CPU the random numbers are the cost: SmolLM2 with r 16 on all 7 projections
spent 23 % of a training step in ``bernoulli_`` (210 masks over ~300M elements per 4-row micro-batch).
:class:`FastDropout` takes three 16-bit lanes from each 64-bit draw of the same generator (3.5x fewer
draws, measured 8.6 -> 2.5 ms per 2048 x 576 mask) and keeps the mask as booleans. It is inverted
dropout with p rounded to a multiple of 1/65536 (0.05 -> 0.0500031); the expectation is unchanged, the
mask is a different draw than peft's, so runs are reproducible within herd, not bit-equal to peft's.

Inside a compiled decoder layer (engine/compiling.py) the mask is drawn in the graph instead: dynamo
cannot trace ``Tensor.random_``, and the graph break it made at each of the 7 adapted projections cut
every compiled layer into eight graphs with Python between them (and ran out of dynamo's recompile
budget). Measured, SmolLM2 LoRA r 16 with dropout 0.05, 4 rows x 512, fp32 on the 2-core AVX2 EPYC (A/B
in one process, README's Speed section): 84 -> 114 useful tokens/s and peak RSS 6.7 -> 4.9 GB.

In the graph, the mask is a counter-based hash of each element's index under a fresh random key
(:func:`hashed_keep`), not inductor's dropout: inductor draws a Philox number per element in scalar
code, which also stops the vectorisation of the RMSNorm or SiLU it is fused with. Profiled
(``bench/step_profile.py``, 2-core AVX-512 EPYC, bf16), the fused kernels holding inductor's dropout
were 28 % of a compiled LoRA step, and full fine-tuning, with 1.5x the FLOPs, ran faster. Measured
(``bench/lora_dropout.py``): a compiled RMSNorm + dropout on 2048 x 576 5.97 -> 0.58 ms, LoRA steps
1.29x. Compiled and eager runs draw different masks (same p); each is reproducible from the seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_LANES = 3  # random_() on int64 fills 63 bits: the low three 16-bit lanes are uniform, the top one is not


class FastDropout(nn.Module):
    """Inverted dropout (drop with probability ``p``, scale the rest by 1/(1-p)) from 16-bit uniform lanes."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * 65536)  # drop where the lane (as int16) < -32768 + threshold
        self.p = self.threshold / 65536

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if torch.compiler.is_compiling():  # traced: a hash inductor vectorises, no graph break
            key = torch.randint(-(2**31), 2**31 - 1, (1,), dtype=torch.int32, device=x.device)
            keep = hashed_keep(x.shape, key, self.threshold, x.device)
            return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)
        n = x.numel()
        words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=x.device).random_()
        lanes = words.view(torch.int16).view(-1, 4)[:, :_LANES].reshape(-1)[:n]
        keep = (lanes >= -32768 + self.threshold).view(x.shape)
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def extra_repr(self) -> str:
        return f"p={self.p:.7f}"


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons' integer hash: xorshift-multiply, good avalanche) on int32 lanes; the
    right shifts are logical (masked), the multiplies wrap as uint32 arithmetic does."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * 0x7FEB352D
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * -0x7B935975  # 0x846CA68B as a signed int32
    return h ^ ((h >> 16) & 0xFFFF)


def hashed_keep(shape: torch.Size, key: torch.Tensor, threshold: int, device=None) -> torch.Tensor:
    """The keep-mask of inverted dropout with p = threshold/65536: element i is dropped where the low
    16 bits of mix(mix(i) ^ key) fall below ``threshold``. Hashing the index before the key makes masks
    under different keys unrelated (``mix(i ^ key)`` would make them permutations of each other)."""
    n = math.prod(shape)
    if n >= 2**31:
        raise ValueError(f"hashed dropout indexes elements as int32: {n} elements is too many")
    i = torch.arange(n, dtype=torch.int32, device=device).view(shape)
    return (_mix32(_mix32(i) ^ key) & 0xFFFF) >= threshold


def apply_lora(model, spec):
    """Wrap ``model`` with a peft LoRA adapter of ``spec`` (r, alpha, dropout, target modules); the
    adapter's input dropout is :class:`FastDropout` with the same p."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                             target_modules=list(spec.target_modules), task_type="CAUSAL_LM"))
    if spec.dropout > 0:
        for module in model.modules():
            drops = getattr(module, "lora_dropout", None)
            if isinstance(drops, nn.ModuleDict):
                for name, d in list(drops.items()):
                    if isinstance(d, nn.Dropout):
                        drops[name] = FastDropout(d.p)
    return model
