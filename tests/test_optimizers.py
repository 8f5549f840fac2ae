"""AdamW with bf16 moments (engine/optimizers.py): unbiased rounding, the fp32 optimizer's trajectory, a
second moment that keeps moving where round-to-nearest stalls, and exact continuation from a state dict."""

from __future__ import annotations

import pytest
import torch

from herd.engine.optimizers import AdamWBf16Moments, round_bf16_stochastic
from herd.engine.training import adamw, param_groups


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    down = (x.view(torch.int32) & -65536).view(torch.float32)  # truncation: toward zero
    up = ((x.view(torch.int32) & -65536) + 65536).view(torch.float32)  # next bf16 away from zero
    return down, up


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rounding_hits_a_neighbour_with_the_right_odds(sign):
    one_ulp = 2.0 ** -7  # bf16 spacing in [1, 2)
    x = torch.full((200_000,), sign * (1.0 + 0.25 * one_ulp))  # a quarter of the way to the next bf16
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    r = round_bf16_stochastic(x, noise).float()
    down, up = _neighbours(x)
    assert ((r == down) | (r == up)).all()
    assert abs((r == up).float().mean().item() - 0.25) < 0.01
    assert abs(r.double().mean().item() - x[0].item()) < 0.01 * one_ulp  # unbiased
    assert round_bf16_stochastic(torch.tensor([1.5]), torch.tensor([65535], dtype=torch.int32)).item() == 1.5


def _trajectory(opt_factory, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.optim.Optimizer]:
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(3000, generator=g))
    b = torch.nn.Parameter(torch.randn(1000, generator=g).view(10, 100))
    opt = opt_factory([w, b])
    for _ in range(steps):
        w.grad = torch.randn(w.shape, generator=g) * 1e-3 + 1e-3 * w.detach()
        b.grad = torch.randn(b.shape, generator=g) * 1e-3
        opt.step()
    return torch.cat([w.detach().view(-1), b.detach().view(-1)]), opt


def test_bf16_moments_follow_torch_adamw():
    kw = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    start, _ = _trajectory(lambda ps: torch.optim.SGD(ps, lr=0.0), 0)
    ref, _ = _trajectory(lambda ps: torch.optim.AdamW(ps, **kw), 100)
    ours, opt = _trajectory(lambda ps: AdamWBf16Moments(ps, **kw), 100)
    moved = (ref - start).abs().mean()
    assert moved > 0.1  # the weights did move (about 1 after 100 steps of lr 1e-2)
    assert (ours - ref).abs().mean() < 0.02 * moved
    assert all(st["exp_avg"].dtype == torch.bfloat16 and st["exp_avg_sq"].dtype == torch.bfloat16
               for st in opt.state.values())


def test_the_second_moment_keeps_moving_where_round_to_nearest_stalls():
    """β2 = 0.999 moves v by 0.1 % of (g² − v) per step, under bf16's half-ulp once v > g²/3: rounded to
    nearest it stalls there (~0.34 g²); stochastic rounding tracks fp32 (0.63 g² after 1,000 steps)."""
    p = torch.nn.Parameter(torch.zeros(4096))
    opt = AdamWBf16Moments([p], lr=0.0, weight_decay=0.0)
    v_nearest = torch.zeros(4096, dtype=torch.bfloat16)
    for _ in range(1000):
        p.grad = torch.ones(4096)
        opt.step()
        v_nearest = (v_nearest.float() * 0.999 + 0.001).to(torch.bfloat16)
    fp32 = 1 - 0.999 ** 1000
    assert abs(opt.state[p]["exp_avg_sq"].float().mean().item() - fp32) < 0.01 * fp32
    assert v_nearest.float().mean().item() < 0.6 * fp32  # what the naive bf16 state would have done


def test_a_state_dict_continues_the_run_exactly():
    kw = {"lr": 1e-2, "weight_decay": 0.1, "seed": 7}
    straight, _ = _trajectory(lambda ps: AdamWBf16Moments(ps, **kw), 6, seed=1)

    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(3000, generator=g))
    b = torch.nn.Parameter(torch.randn(1000, generator=g).view(10, 100))
    opt = AdamWBf16Moments([w, b], **kw)
    for k in range(6):
        if k == 3:  # a new optimizer from the saved state, as a resumed run builds it
            saved = opt.state_dict()
            opt = AdamWBf16Moments([w, b], **kw)
            opt.load_state_dict(saved)
        w.grad = torch.randn(w.shape, generator=g) * 1e-3 + 1e-3 * w.detach()
        b.grad = torch.randn(b.shape, generator=g) * 1e-3
        opt.step()
    assert torch.equal(torch.cat([w.detach().view(-1), b.detach().view(-1)]), straight)
    assert opt.state[w]["exp_avg"].dtype == torch.bfloat16


def test_the_loop_builds_it_and_saves_half_the_state_bytes(tiny_model):
    params = [p for p in tiny_model.parameters() if p.requires_grad]
    opts = {s: adamw(param_groups(params, 0.0), lr=1e-3, state=s) for s in ("fp32", "bf16")}
    assert isinstance(opts["bf16"], AdamWBf16Moments)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    state_bytes = {}
    for s, opt in opts.items():
        opt.step()
        state_bytes[s] = sum(t.numel() * t.element_size() for st in opt.state.values()
                             for k, t in st.items() if k.startswith("exp_avg"))
    assert state_bytes["bf16"] * 2 == state_bytes["fp32"]


def test_bf16_state_with_fsdp_is_a_config_error():
    from pydantic import ValidationError

    from herd.core.recipe import SFTStage

    with pytest.raises(ValidationError, match="optimizer_state bf16 does not support fsdp"):
        SFTStage(name="sft", kind="sft", optimizer_state="bf16", fsdp=True)
