"""Alignment objectives against hand computations, and against TRL 1.16's own loss code."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from herd.engine.losses import (
    MARGINS,
    bradley_terry_loss,
    combine_rewards,
    dpo_loss,
    logit,
    ppo_sequence_reward,
    ppo_token_rewards,
    rating_margin,
    rating_margins,
    whiten,
)
from herd.stages.rejection_sampling import distribution, expected_max_of_k, select_best


def _nls(x: float) -> float:
    """−log σ(x), by hand."""
    return math.log(1 + math.exp(-x))


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.5]), torch.tensor([-11.5, -2.0])
    losses, cr, rjr = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: (−10+11) − (−12+11.5) = 1.5 → −log σ(0.75); pair 1: (0.5) − (−1) = 1.5 → same
    assert losses.tolist() == pytest.approx([_nls(0.75), _nls(0.75)], abs=1e-6)
    assert cr.tolist() == pytest.approx([0.5, 0.25]) and rjr.tolist() == pytest.approx([-0.25, -0.5])
    zero, _, _ = dpo_loss(pc, pr, pc, pr, beta=0.1)  # policy == reference: log 2 per pair
    assert zero.tolist() == pytest.approx([math.log(2)] * 2)
    pc.requires_grad_(True)
    dpo_loss(pc, pr, rc, rr, 0.5)[0].sum().backward()
    assert (pc.grad < 0).all()  # raising the chosen log-prob lowers the loss


def _trl_self(**attrs):
    base = dict(model=SimpleNamespace(training=False),
                accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                            gather=lambda x: x),
                _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    return SimpleNamespace(**{**base, **attrs})


def test_dpo_loss_matches_trl_sigmoid():
    """TRL 1.16 has no standalone DPO loss function: run DPOTrainer._compute_loss on a stub trainer whose
    'model' returns per-token log-probs that sum to the sequence log-probs we give both implementations."""
    from trl import DPOTrainer

    g = torch.Generator().manual_seed(0)
    B, T = 3, 6
    tok_logps = -torch.rand(2 * B, T - 1, generator=g) * 3
    mask = torch.ones(2 * B, T, dtype=torch.long)
    mask[:, :2] = 0  # prompt tokens
    tok_logps = tok_logps * mask[:, 1:]
    ref = -torch.rand(2 * B, generator=g) * 20
    stub = _trl_self(aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                     f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=0.2,
                     use_weighting=False, label_smoothing=0.0)
    out = SimpleNamespace(log_probs=tok_logps, entropy=torch.zeros(2 * B, T - 1),
                          mean_logits=torch.zeros(2 * B, T - 1), is_top1=torch.zeros(2 * B, T - 1, dtype=torch.bool))
    inputs = {"input_ids": torch.ones(2 * B, T, dtype=torch.long), "attention_mask": torch.ones(2 * B, T),
              "completion_mask": mask, "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:]}
    trl_loss = DPOTrainer._compute_loss(stub, lambda **kw: out, inputs, False)
    seq = tok_logps.sum(1)
    ours, cr, rr = dpo_loss(seq[:B], seq[B:], ref[:B], ref[B:], beta=0.2)
    assert float(trl_loss) == pytest.approx(float(ours.mean()), abs=1e-6)
    assert stub._metrics["eval"]["rewards/margins"][0] == pytest.approx(float((cr - rr).mean()), abs=1e-5)


def test_bradley_terry_by_hand_and_margins():
    rc, rr = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.5, 1.0])
    assert bradley_terry_loss(rc, rr).tolist() == pytest.approx([_nls(1.0), _nls(-0.5), math.log(2)])
    m = torch.tensor([1.0, 0.0, 1 / 3])
    assert bradley_terry_loss(rc, rr, m).tolist() == pytest.approx([math.log(2), _nls(-0.5), _nls(-1 / 3)])
    assert bradley_terry_loss(rc, rr, 1.0).tolist() == pytest.approx([math.log(2), _nls(-1.5), _nls(-1.0)])
    # Table 27: significantly better / better / slightly better / negligibly better-unsure
    assert MARGINS["large"] == (3, 2, 1, 0)
    assert rating_margin("better", "small") == pytest.approx(2 / 3)
    assert rating_margin("significantly_better", "large") == 3.0
    assert rating_margin("slightly_better", "none") == 0.0 and rating_margin(None, "large") == 0.0
    assert rating_margin("better", "large", explicit=0.25) == 0.25
    assert rating_margins(["better", None, "negligibly_better"], "large").tolist() == [2.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        rating_margin("better", "huge")


def test_bradley_terry_matches_trl_reward_trainer():
    from trl import RewardTrainer

    logits = torch.tensor([[2.0], [0.3], [-1.0], [1.0], [0.5], [0.0]])  # chosen rows first, then rejected
    margin = torch.tensor([1.0, 0.0, 2 / 3])
    for extra in ({}, {"margin": margin}):
        stub = _trl_self(args=SimpleNamespace(center_rewards_coefficient=None))
        inputs = {"input_ids": torch.zeros(6, 2, dtype=torch.long), "attention_mask": torch.ones(6, 2), **extra}
        trl_loss = RewardTrainer.compute_loss(stub, lambda **kw: SimpleNamespace(logits=logits), inputs)
        ours = bradley_terry_loss(logits[:3, 0], logits[3:, 0], extra.get("margin")).mean()
        assert float(trl_loss) == pytest.approx(float(ours), abs=1e-6)


def test_combine_rewards_piecewise():
    helpful = torch.tensor([0.9, 0.9, 0.9, 0.2])
    safety = torch.tensor([0.5, 0.1, 0.5, 0.14999])
    is_safety = torch.tensor([False, False, True, False])
    # 0: safe reply, helpfulness prompt → Rh; 1: Rs < 0.15 → Rs; 2: safety prompt → Rs; 3: just below → Rs
    assert combine_rewards(helpful, safety, is_safety).tolist() == pytest.approx([0.9, 0.1, 0.5, 0.14999])
    assert combine_rewards(helpful, safety, True).tolist() == pytest.approx(safety.tolist())
    assert combine_rewards(helpful, torch.full((4,), 0.15), False).tolist() == pytest.approx(helpful.tolist())


def test_logit_whiten_and_ppo_reward_by_hand():
    p = torch.tensor([0.5, 0.8, 0.2])
    assert logit(p).tolist() == pytest.approx([0.0, math.log(4), -math.log(4)], abs=1e-6)
    assert torch.isfinite(logit(torch.tensor([0.0, 1.0]))).all()
    x = torch.tensor([1.0, 2.0, 3.0])  # mean 2, Bessel variance 1
    assert whiten(x).tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    rc = torch.tensor([0.5, 0.8, 0.2])
    pol, ref = torch.tensor([-5.0, -6.0, -7.0]), torch.tensor([-5.5, -6.0, -6.0])
    # whiten(logit) = [0, l, −l] / l with l = log 4 (std of [0, l, −l] is l) → [0, 1, −1]; KL = [0.5, 0, −1]
    R = ppo_sequence_reward(rc, pol, ref, beta=0.1)
    assert R.tolist() == pytest.approx([-0.05, 1.0, -0.9], abs=1e-5)
    tok_pol = torch.tensor([[-2.0, -3.0, 0.0], [-6.0, 0.0, 0.0], [-3.0, -2.0, -2.0]])
    tok_ref = torch.tensor([[-2.5, -3.0, 0.0], [-6.0, 0.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    per_tok = ppo_token_rewards(rc, tok_pol, tok_ref, mask, beta=0.1)
    assert per_tok.sum(1).tolist() == pytest.approx(R.tolist(), abs=1e-5)
    assert per_tok[0].tolist() == pytest.approx([-0.05, 0.0, 0.0], abs=1e-6)  # reward at the last real token
    assert per_tok[2].tolist() == pytest.approx([0.1, 0.0, -1.0], abs=1e-5)


def test_max_of_k_and_selection():
    r = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 6.0]])
    # row 0: k=1 mean 2, k=2 mean of pair maxima (2+3+3)/3 = 8/3, k=3 max 3; row 1: 2, 4, 6
    assert expected_max_of_k(r) == pytest.approx([2.0, (8 / 3 + 4) / 2, 4.5], abs=1e-5)
    assert select_best(r).tolist() == [1, 2]
    assert select_best(torch.tensor([[1.0, 1.0]])).tolist() == [0]  # ties: the first sample
    # a sample cut at the token cap is not eligible: the best whole one is kept, or none (-1)
    whole = torch.tensor([[True, False, True], [False, False, False]])
    assert select_best(r, whole).tolist() == [2, -1]
    assert select_best(r, torch.ones_like(whole)).tolist() == [1, 2]
    d = distribution(r)
    assert d["n"] == 6 and d["max"] == 6.0 and d["mean"] == pytest.approx(2.0)
