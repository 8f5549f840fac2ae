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

One mask per input, not per projection: q/k/v read the same normed hidden state, and so do gate/up. peft
draws an independent mask for each; herd draws one per group (:data:`SHARED_INPUT`) and every adapter in
the group drops the same elements, a departure from peft (each adapter still sees inverted dropout with
the same p; what changes is that the three adapters' masks are equal, not independent). Why: the fused
kernels holding the masks were ~22 % of a compiled LoRA step on the AMX Xeon (``bench/step_profile.py``),
and a group's mask is one hash in the graph (the partitioner's CSE merges the identical chains) and one
draw eagerly. The group's key is a buffer its parent module (``self_attn``, ``mlp``) refreshes in a
forward pre-hook, so it is drawn inside the compiled layer, once per call, from the seeded generator.
Measured on the Xeon (``bench/lora_dropout.py --rounds 2``, alternating in one process): compiled LoRA
steps 259.7 / 297.1 -> 306.8 / 306.8 useful tokens/s, 1.11x median (1.18x, 1.03x); loss after 8 steps
2.0025 -> 2.0042 (the masks differ). No herd recipe trains LoRA, so no scorecard changes with it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_LANES = 3  # random_() on int64 fills 63 bits: the low three 16-bit lanes are uniform, the top one is not


# projections that read the same input tensor in a Llama decoder layer: one dropout mask per group
SHARED_INPUT: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FastDropout(nn.Module):
    """Inverted dropout (drop with probability ``p``, scale the rest by 1/(1-p)) from 16-bit uniform lanes.

    ``shared``: the module is the one dropout of a group of projections that read one input; its mask
    depends only on :attr:`key`, which the group's parent redraws before each call (:func:`share_masks`),
    so every member drops the same elements."""

    def __init__(self, p: float, shared: bool = False):
        super().__init__()
        self.threshold = round(p * 65536)  # drop where the lane (as int16) < -32768 + threshold
        self.p = self.threshold / 65536
        self.shared = shared
        if shared:  # the group's key, not in the state dict: a fresh one per call, never a trained value
            self.register_buffer("key", torch.zeros(1, dtype=torch.int32), persistent=False)
            self._mask: tuple[int, torch.Size, torch.Tensor] | None = None  # eager: (key version, shape, keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if torch.compiler.is_compiling():  # traced: a hash inductor vectorises, no graph break
            key = self.key if self.shared else draw_key(x.device)
            keep = hashed_keep(x.shape, key, self.threshold, x.device)
        elif self.shared:
            version = self.key._version  # bumped by the parent's redraw: a new call, a new mask
            if self._mask is None or self._mask[0] != version or self._mask[1] != x.shape:
                self._mask = (version, x.shape, self._lanes_keep(x))
            keep = self._mask[2]
        else:
            keep = self._lanes_keep(x)
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def _lanes_keep(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        words = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64, device=x.device).random_()
        lanes = words.view(torch.int16).view(-1, 4)[:, :_LANES].reshape(-1)[:n]
        return (lanes >= -32768 + self.threshold).view(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p:.7f}" + (", shared" if self.shared else "")


def draw_key(device=None) -> torch.Tensor:
    """A fresh int32 hash key from the default generator (traceable: no graph break)."""
    return torch.randint(-(2**31), 2**31 - 1, (1,), dtype=torch.int32, device=device)


def _redraw_keys(parent: nn.Module, args) -> None:
    """Forward pre-hook of a group's parent: a new key for each shared dropout before its members run."""
    for d in parent._herd_shared_dropouts:
        if d.training and d.threshold:
            d.key.copy_(draw_key(d.key.device))


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
    adapter's input dropout is :class:`FastDropout` with the same p, one mask per input (:func:`share_masks`)."""
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
        share_masks(model)
    return model


def share_masks(model: nn.Module) -> int:
    """Give the adapted projections of each :data:`SHARED_INPUT` group under one parent a single
    :class:`FastDropout` (per adapter name), whose key the parent redraws before each forward. Returns how
    many groups were joined."""
    joined = 0
    for parent in list(model.modules()):
        children = dict(parent.named_children())
        shared: list[FastDropout] = []
        for group in SHARED_INPUT:
            dicts = [getattr(children.get(n), "lora_dropout", None) for n in group]
            dicts = [d for d in dicts if isinstance(d, nn.ModuleDict)]
            for adapter in dict.fromkeys(a for d in dicts for a in d):  # ordered: the keys' draw order is fixed
                members = [d for d in dicts if adapter in d and isinstance(d[adapter], FastDropout)]
                if len(members) < 2:
                    continue
                one = FastDropout(members[0][adapter].p, shared=True)
                for d in members:
                    d[adapter] = one
                shared.append(one)
                joined += 1
        if shared:
            if not hasattr(parent, "_herd_shared_dropouts"):
                parent._herd_shared_dropouts = []
                parent.register_forward_pre_hook(_redraw_keys)
            parent._herd_shared_dropouts.extend(shared)
    return joined
