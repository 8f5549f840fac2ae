"""AdamW with its two moments stored in bf16: full fine-tuning's optimizer state at half the memory.

Full fine-tuning in fp32 holds weights, gradients and AdamW's two moments: 16 bytes per parameter, 2.2 GB
for SmolLM2-135M. Storing the moments in bf16 saves 4 bytes per parameter (0.54 GB there) while weights,
gradients and the update itself stay fp32. Plain round-to-nearest would not work: with β2 = 0.999 the
second moment moves by 0.1 % of (g² − v) per step, below bf16's 2⁻⁹ half-ulp, so it would stop moving.
The moments are written back with stochastic rounding instead (unbiased: E[round(x)] = x), as torchao's
bf16 optimizers do. The rounding noise is a function of (seed, step, chunk), so a resumed run continues
exactly. Not for FSDP-sharded (DTensor) parameters.
"""

from __future__ import annotations

import math

import torch

CHUNK = 1 << 22  # elements updated per pass: a few 16-MB fp32 temporaries, not a whole embedding's


def round_bf16_stochastic(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` to bf16, rounding up with probability equal to the dropped fraction. ``noise``: int32
    uniform in [0, 2¹⁶), same shape. Adding it to the 16 low bits that bf16 drops carries into the kept
    bits exactly that often; truncation then makes the cast exact. Sign-magnitude floats make this
    symmetric for negative values."""
    bits = x.view(torch.int32) + noise
    return bits.bitwise_and_(-65536).view(torch.float32).to(torch.bfloat16)


class AdamWBf16Moments(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction, eps outside the square root)
    with ``exp_avg`` and ``exp_avg_sq`` kept in bf16; each step's update uses the fp32 moments before
    they are rounded."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, seed: int = 0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._noise_len = min(CHUNK, max((p.numel() for g in self.param_groups for p in g["params"]), default=1))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        c = 0  # chunks so far this step: each reads its own window of the step's noise
        noise_at: dict[int, torch.Tensor] = {}  # drawn once per step, dropped when the step ends
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.contiguous_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16,
                                                        memory_format=torch.contiguous_format)
                st["step"] += 1
                t = int(st["step"].item())
                step_size = lr / (1 - b1 ** t)
                root_bc2 = math.sqrt(1 - b2 ** t)
                noise = noise_at.get(t)
                if noise is None:
                    noise = noise_at[t] = self._noise(t, p.device)
                if wd:
                    p.mul_(1 - lr * wd)
                flat_p, flat_g = p.view(-1), p.grad.reshape(-1)
                flat_m, flat_v = st["exp_avg"].view(-1), st["exp_avg_sq"].view(-1)
                for i in range(0, flat_p.numel(), CHUNK):
                    j = min(i + CHUNK, flat_p.numel())
                    n, off, c = j - i, (c * 40503) % self._noise_len, c + 1  # each chunk its own window
                    g = flat_g[i:j].float()
                    m = flat_m[i:j].float().lerp_(g, 1 - b1)
                    v = flat_v[i:j].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                    flat_m[i:j] = round_bf16_stochastic(m, noise[0, off:off + n])
                    flat_v[i:j] = round_bf16_stochastic(v, noise[1, off:off + n])
                    # m / (sqrt(v / bc2) + eps) · lr / bc1, with the sqrt(bc2) moved out of the division
                    flat_p[i:j].addcdiv_(m, v.sqrt_().add_(eps * root_bc2), value=-step_size * root_bc2)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts floating-point state to the parameter's dtype (fp32): cast the moments back
        (lossless, they were bf16 values)."""
        super().load_state_dict(state_dict)
        for st in self.state.values():
            for k in ("exp_avg", "exp_avg_sq"):
                if k in st:
                    st[k] = st[k].to(torch.bfloat16)

    def _noise(self, t: int, device: torch.device) -> torch.Tensor:
        """Two rows of 16-bit uniform integers for step ``t``, twice a chunk long; each chunk reads its own
        window of them. Drawing fresh values for all 135M parameters per moment per step cost ~1 s."""
        g = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + t)
        return torch.randint(0, 1 << 16, (2, 2 * self._noise_len), dtype=torch.int32, generator=g, device=device)
