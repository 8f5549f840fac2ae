"""The ``ppo`` stage: its pieces against hand computations, learning on a toy reward, kill/resume, and the
stage through ``herd derive`` (SFT → reward model → PPO) on the tiny random Llama.

The toy reward scores the share of a reply's tokens in the lower half of the vocabulary (as σ(8·share − 4),
a probability like Llama 2's Rc): no model needed, and the tiny random policy can move it within a few
iterations, so the test sees PPO climb it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from herd.core.paths import repo_root
from herd.stages.configs import PPOStage
from tests.align_helpers import toy_recipe

torch.set_num_threads(1)

TEMPLATE = "llama2_chat"


def close(t: torch.Tensor, want, atol: float = 1e-6) -> None:
    want = torch.tensor(want, dtype=torch.float64)
    assert torch.allclose(t.detach().double(), want, atol=atol), (t.tolist(), want.tolist())


def ppo_config(**kw) -> PPOStage:
    # top_k 50: a random model spreads its samples over all 49,152 tokens, where 5 iterations of 32
    # samples give PPO no signal (measured: the toy reward fell 0.66 -> 0.55 at top_k 0, rose 0.52 -> 0.78 at 50)
    base = dict(data=[{"name": "x", "path": "unused"}], reward_model="unused", iterations=5, batch_size=32,
                mini_batch=8, micro_batch=8, lr=1e-3, max_new_tokens=8, precision="fp32", beta=0.01, seed=0,
                top_k=50)
    return PPOStage(**{**base, **kw})


def toy_prompts(n: int = 32) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Tell me about item {i}"}], "safety": False}
            for i in range(n)]


class LowHalfReward:
    """Rc = σ(8·share − 4), share = fraction of the reply's tokens whose id is below vocab/2."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, prompts, replies, is_safety):
        shares = []
        for r in replies:
            ids = self.tok(r, add_special_tokens=False)["input_ids"]
            shares.append(sum(1 for i in ids if i < len(self.tok) // 2) / max(1, len(ids)))
        return torch.sigmoid(torch.tensor(shares) * 8 - 4)


def build_models(ref_base, seed: int = 0):
    from transformers import LlamaForSequenceClassification

    from herd.base import load_model

    torch.manual_seed(seed)
    value = LlamaForSequenceClassification.from_pretrained(str(ref_base.path), num_labels=1, dtype=torch.float32)
    return load_model(ref_base), load_model(ref_base), value


def run_toy(ref_base, run_dir: Path, cfg: PPOStage, resume: bool = False):
    from herd.base import load_tokenizer
    from herd.stages.ppo import train_ppo
    from herd.templates import get_template

    tok = load_tokenizer(ref_base)
    policy, ref, value = build_models(ref_base, cfg.seed)
    res = train_ppo(policy, ref, value, tok, get_template(TEMPLATE), toy_prompts(), LowHalfReward(tok), cfg,
                    run_dir, resume=resume, progress=False)
    return res, policy, value


# -- pure pieces ------------------------------------------------------------------------------------

def test_token_rewards_match_hand_computation():
    """−β·(log π − log π0) on every reply token, whiten(logit(Rc)) added at each row's last token."""
    from herd.engine.losses import ppo_token_rewards

    beta = 0.1
    rc = torch.tensor([0.8, 0.3])
    pol = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, 9.9]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.4, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = ppo_token_rewards(rc, pol, ref, mask, beta)
    l1, l2 = math.log(0.8 / 0.2), math.log(0.3 / 0.7)
    mean, sd = (l1 + l2) / 2, math.sqrt(((l1 - l2) / 2) ** 2 * 2)  # Bessel: var = Σ(x−m)²/(n−1)
    w1, w2 = (l1 - mean) / sd, (l2 - mean) / sd
    want = [[-0.1 * 0.5, -0.1 * -1.0, 0.0 + w1], [-0.1 * 0.2, -0.1 * -1.0 + w2, 0.0]]
    close(got, want, 1e-5)


def test_gae_matches_hand_computation():
    from herd.stages.ppo import gae

    r = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.5, 2.0, 7.0, 7.0]])
    v = torch.tensor([[0.5, 0.4, 0.3, 0.2], [1.0, 0.5, 9.0, 9.0]])  # row 2: two tokens, junk after
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.95)
    # row 1: δ3 = 1 − .2 = .8; δ2 = 0 + .2 − .3 = −.1; δ1 = −.2 + .3 − .4 = −.3; δ0 = .1 + .4 − .5 = 0
    a3 = 0.8
    a2 = -0.1 + 0.95 * a3
    a1 = -0.3 + 0.95 * a2
    a0 = 0.0 + 0.95 * a1
    # row 2: δ1 = 2 − .5 = 1.5 (nothing after the last token); δ0 = .5 + .5 − 1 = 0
    b1 = 1.5
    b0 = 0.0 + 0.95 * b1
    close(adv, [[a0, a1, a2, a3], [b0, b1, 0, 0]], 1e-6)
    close(ret, [[a0 + .5, a1 + .4, a2 + .3, a3 + .2], [b0 + 1, b1 + .5, 0, 0]], 1e-6)
    adv9, _ = gae(r[:1], v[:1], mask[:1], gamma=0.9, lam=0.5)  # γ enters both δ and the recursion
    d = [0.1 + 0.9 * 0.4 - 0.5, -0.2 + 0.9 * 0.3 - 0.4, 0.0 + 0.9 * 0.2 - 0.3, 1.0 - 0.2]
    want = [0.0] * 4
    for t in reversed(range(4)):
        want[t] = d[t] + (0.45 * want[t + 1] if t < 3 else 0.0)
    close(adv9[0], want, 1e-6)


def test_clipped_objectives_match_hand_computation():
    from herd.stages.ppo import policy_loss, value_loss

    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    logps = (old + torch.tensor([[0.3, -0.5, -0.5, 5.0]])).requires_grad_()
    adv = torch.tensor([[1.0, 2.0, -1.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the 4th token is padding
    loss, clipfrac, _ = policy_loss(logps, old, adv, mask, clip=0.2)
    r2 = math.exp(-0.5)
    # token 1: ρ=e^.3>1.2, A>0 → clipped −1.2; token 2: ρ=e^−.5, A=2 → max(−2ρ, −1.6) = −2ρ (unclipped);
    # token 3: ρ=e^−.5<0.8, A<0 → max(ρ, 0.8) = 0.8 (clipped)
    assert float(loss.detach()) == pytest.approx((-1.2 - 2 * r2 + 0.8) / 3, abs=1e-6)
    assert float(clipfrac) == pytest.approx(2 / 3)
    loss.backward()  # only the unclipped token carries gradient: d(−Aρ)/dlogp = −Aρ
    close(logps.grad, [[0.0, -2 * r2 / 3, 0.0, 0.0]], 1e-6)
    vl, vclip = value_loss(torch.tensor([[1.0, 0.0, 5.0]]), torch.tensor([[0.5, 0.1, 0.0]]),
                           torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0]]), clip=0.2)
    # token 1: (1−2)² = 1 vs (0.7−2)² = 1.69 → 1.69; token 2: 0 vs (0−0)² → 0
    assert float(vl) == pytest.approx(0.5 * 1.69 / 2) and float(vclip) == pytest.approx(0.5)


def test_iteration_prompts_cover_each_prompt_once_per_pass():
    from herd.stages.ppo import iteration_prompts

    seen = [i for it in range(3) for i in iteration_prompts(10, 5, it, seed=3)]
    assert sorted(seen[:10]) == list(range(10)) and len(seen) == 15
    assert iteration_prompts(10, 5, 1, seed=3) == seen[5:10]  # a pure function of (iteration, seed)
    assert seen[10:] == torch.randperm(10, generator=torch.Generator().manual_seed(4))[:5].tolist()  # 2nd pass


def test_config_defaults_are_llama2():
    cfg = PPOStage(data=[{"name": "x", "path": "p"}], reward_model="rm")
    assert (cfg.beta, cfg.clip, cfg.lr, cfg.batch_size, cfg.mini_batch, cfg.ppo_epochs) == (0.01, 0.2, 1e-6, 512, 64, 1)
    assert (cfg.adam_betas, cfg.adam_eps, cfg.weight_decay, cfg.grad_clip) == ((0.9, 0.95), 1e-5, 0.1, 1.0)
    assert (cfg.gamma, cfg.lam, cfg.temperature) == (1.0, 0.95, 1.0)
    with pytest.raises(ValidationError):
        PPOStage(data=[{"name": "x", "path": "p"}], reward_model="rm", nonsense=1)


def test_reward_scores_are_probabilities():
    """One reward model: σ(raw score), so logit(Rc) gives the raw score back; two: Llama 2's piecewise Rc."""
    from types import SimpleNamespace

    from herd.engine.losses import logit
    from herd.stages.ppo import reward_scores
    from herd.stages.rejection_sampling import Scorer

    helpful = SimpleNamespace(score=lambda p, r, b, desc=None: torch.tensor([2.0, -1.0]))
    safety = SimpleNamespace(score=lambda p, r, b, desc=None: torch.tensor([3.0, -3.0]))  # σ: 0.95, 0.047 (< 0.15)
    prompts, replies = [[{"role": "user", "content": "x"}]] * 2, ["a", "b"]
    one = reward_scores(Scorer(helpful))(prompts, replies, [False, False])
    close(logit(one), [2.0, -1.0], 1e-5)
    two = reward_scores(Scorer(helpful, safety))(prompts, replies, [False, False])
    close(two, [float(torch.sigmoid(torch.tensor(2.0))), float(torch.sigmoid(torch.tensor(-3.0)))], 1e-6)


# -- the loop ---------------------------------------------------------------------------------------

def test_ppo_raises_toy_reward(tmp_path, tiny_ref):
    """Five iterations of 32 samples: the mean reward climbs, the KL to the reference starts at 0 and grows,
    and the rollout's token rewards are Llama 2's shaping of its own log-probs and scores."""
    from herd.engine.losses import logit, whiten

    res, _, _ = run_toy(tiny_ref, tmp_path / "run", ppo_config())
    h = res.history
    assert len(h) == 5 and all(x["samples"] == 32 for x in h)
    assert h[0]["kl"] == 0.0 and h[0]["clip_frac"] < 0.5
    assert h[-1]["score_mean"] > h[0]["score_mean"] + 0.1, [x["score_mean"] for x in h]
    assert h[-1]["kl"] > 0
    ro = res.last
    want = -0.01 * (ro.old_logps - ro.ref_logps) * ro.mask
    last = ro.mask.sum(dim=1).long() - 1
    want[torch.arange(len(last)), last] += whiten(logit(ro.scores))
    assert torch.allclose(ro.rewards, want, atol=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all("elapsed" in r for r in rows)


def test_early_stopping_keeps_the_best_evaluated_policy(tmp_path, tiny_ref):
    """Held-out rewards 0.1, 0.5, 0.3, 0.2 with patience 2: training stops after iteration 4 (of 6) and the
    policy is the one evaluated at iteration 2, as Llama 2 early-stops PPO on held-out prompts."""
    from herd.base import load_tokenizer
    from herd.stages.ppo import train_ppo
    from herd.templates import get_template

    tok = load_tokenizer(tiny_ref)
    policy, ref, value = build_models(tiny_ref)
    scripted, seen = iter([0.1, 0.5, 0.3, 0.2]), []

    def evaluate():
        seen.append({k: v.clone() for k, v in policy.state_dict().items()})
        return {"reward_mean": next(scripted)}

    cfg = ppo_config(iterations=6, batch_size=8, eval_every=1, patience=2)
    res = train_ppo(policy, ref, value, tok, get_template(TEMPLATE), toy_prompts(), LowHalfReward(tok), cfg,
                    tmp_path / "run", progress=False, evaluate=evaluate)
    assert res.iterations == 4 and len(seen) == 4 and [h["heldout_reward"] for h in res.history] == [0.1, 0.5, 0.3, 0.2]
    assert res.best == {"iteration": 2, "heldout_reward": 0.5, "stopped_at": 4}
    final = policy.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)
    assert not all(torch.equal(final[k], seen[3][k]) for k in final)  # training did move it after iteration 2


_KILLED = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from herd.base import resolve_base
from tests.test_align_ppo import ppo_config, run_toy
cfg = ppo_config(**__import__('json').loads(sys.argv[1]))
run_toy(resolve_base('tiny'), Path(sys.argv[2]), cfg)
"""


@pytest.mark.slow
def test_ppo_kill_and_resume_is_identical(tmp_path, tiny_ref, monkeypatch):
    import herd.stages.ppo as ppo

    kw = {"iterations": 4, "batch_size": 16, "checkpoint_every": 2}
    cfg = ppo_config(**kw)
    straight, p1, v1 = run_toy(tiny_ref, tmp_path / "straight", cfg)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HERD_TEST_KILL_AFTER_STEP="2")
    killed = subprocess.run([sys.executable, "-c", _KILLED, json.dumps(kw), str(tmp_path / "killed")],
                            capture_output=True, text=True, env=env, cwd=repo_root())
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 2
    calls = []
    real = ppo.rollout
    monkeypatch.setattr(ppo, "rollout", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    resumed, p2, v2 = run_toy(tiny_ref, tmp_path / "killed", cfg, resume=True)
    assert calls == [2 * 7919, 3 * 7919]  # only the iterations after the checkpoint ran again

    def strip(h):
        return [{k: v for k, v in x.items() if k != "elapsed"} for x in h]

    assert len(resumed.history) == 4 and strip(resumed.history) == strip(straight.history)
    for a, b in ((p1, p2), (v1, v2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the stage through herd derive ----------------------------------------------------------------

def test_ppo_stage_through_derive(tmp_path):
    from herd.api import derive
    from herd.artifacts import read_lineage

    path = toy_recipe(tmp_path, [
        {"name": "sft", "kind": "sft", "max_steps": 1, "global_batch": 4, "max_len": 128, "precision": "fp32"},
        {"name": "rm", "kind": "reward_model", "data": [{"name": "p", "path": "pairs.jsonl", "format": "preference"}],
         "eval_size": 4, "max_train_pairs": 16, "global_batch": 8, "lr": 1e-3, "precision": "fp32", "max_len": 128},
        {"name": "ppo", "kind": "ppo", "data": [{"name": "p", "path": "pairs.jsonl", "format": "preference"}],
         "reward_model": "rm", "eval_size": 2, "iterations": 2, "batch_size": 4, "mini_batch": 2,
         "micro_batch": 2, "max_new_tokens": 6, "lr": 1e-4, "precision": "fp32"}], name="ppotoy", template=TEMPLATE)
    res = derive(str(path), base="tiny", profile="full", out=tmp_path / "ws", progress=False)
    dirs = sorted(p for p in (tmp_path / "ws").iterdir() if p.is_dir() and p.name[:2].isdigit())
    kinds = [read_lineage(d)["stage"]["kind"] for d in dirs]
    assert kinds == ["sft", "reward_model", "ppo"] and res.path == dirs[-1]
    lin = read_lineage(dirs[-1])
    assert lin["parent"]["lineage_id"] == read_lineage(dirs[0])["id"]  # the policy chain skips the RM
    m = lin["metrics"]
    assert m["iterations"] == 2 and m["heldout_greedy_reward"]["n"] == 2 and m["heldout_greedy_reward_parent"]["n"] == 2
    assert m["reward_models"] == [str(dirs[1])] and m["kl_first_last"][0] == 0.0
    rows = [json.loads(x) for x in (dirs[-1] / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"reward_mean", "kl", "policy_loss", "value_loss", "clip_frac"} <= set(rows[0])
    assert json.loads((dirs[-1] / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert len((dirs[-1] / "ppo_samples.jsonl").read_text().splitlines()) == 4
    assert not list((tmp_path / "ws").glob("*.work"))
