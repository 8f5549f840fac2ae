"""The ``ppo`` stage: Llama 2's PPO (dossier §5.2 step 5), a hand-written loop.

Models: the policy is the parent (``LlamaForCausalLM``, trained in full); the reference π0 is a frozen
copy of the parent; the reward is the stage's reward model, or Llama 2's piecewise ``Rc`` of a
helpfulness and a safety reward model (:class:`herd.stages.rejection_sampling.Scorer`); the value function is a
SEPARATE model, ``LlamaForSequenceClassification`` loaded from the parent (its transformer plus a fresh
scalar head) read at every reply position. A separate value model rather than a head on the policy
trunk: the value loss then never moves the policy's weights (no value-loss coefficient to tune, and the
saved policy is trained by the policy objective alone), at the price of a third copy of the weights.

One iteration:

1. ``batch_size`` training prompts (a seeded permutation per pass over the prompts), one reply each,
   sampled from the policy at ``temperature`` with :func:`herd.engine.generation.generate` (seeded by the
   iteration, so a resumed run regenerates the interrupted iteration's samples exactly);
2. each (prompt, reply) rendered through the template (:func:`herd.engine.logprobs.encode_reply`): the
   reply's template tokens (Llama 2: ``" " + answer + " " + EOS``) are the actions, as in every other
   alignment stage. The reply text is re-tokenized, not the sampled ids (the template strips and
   terminates it), so a sample cut at ``max_new_tokens`` is credited with the template's EOS;
3. ``Rc`` in (0, 1) from the reward model(s) (σ of the raw score with one model);
4. per token ``r_t = −β·(log π(a_t) − log π0(a_t))`` plus ``whiten(logit(Rc))`` at the last token
   (:func:`herd.engine.losses.ppo_token_rewards`, whitened over the iteration's batch);
5. GAE advantages (:func:`gae`), whitened over the batch's tokens; returns = advantages + values;
6. ``ppo_epochs`` passes over the samples in shuffled mini-batches of ``mini_batch``, one optimizer step
   each: clipped policy loss (:func:`policy_loss`) + clipped value loss (:func:`value_loss`), token means
   over the mini-batch.

Models run in eval mode throughout (no dropout), so the ratio is exactly 1 at a mini-batch's first
step on fresh samples. Atomic checkpoints every ``checkpoint_every`` iterations (policy + value weights,
optimizer, history, RNG; herd.engine.training's helpers), resumed with ``resume``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from herd.artifacts import save_model_folder, staging_dir, template_record
from herd.base import BaseRef, load_model, load_tokenizer
from herd.core.errors import HerdError
from herd.core.progress import Progress
from herd.core.registry import STAGES
from herd.engine.distributed import all_sum, barrier, map_chunks, map_rows
from herd.engine.logprobs import Encoded, _causal_lm, encode_reply, pad_right
from herd.engine.losses import logit, ppo_token_rewards, whiten
from herd.engine.training import (
    _dedupe_shared,
    adamw,
    autocast,
    device,
    dist_env,
    find_checkpoint,
    load_checkpoint,
    param_groups,
    save_checkpoint,
)
from herd.stages import StageContext
from herd.stages.common import finish_artifact
from herd.stages.configs import PPOStage
from herd.stages.pairs import recipe_dir
from herd.templates import IGNORE_INDEX, Template, TemplateError

# score_fn(prompts, replies, is_safety) -> Rc in (0, 1), shape [n]
ScoreFn = Callable[[list[list[dict]], list[str], list[bool]], torch.Tensor]

# -- pure pieces ------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`herd.engine.losses.whiten` over the masked entries; masked-out entries become 0."""
    sel = mask.bool()
    out = torch.zeros_like(x)
    out[sel] = whiten(x[sel])
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation on left-aligned reply tokens ([batch, T], ``mask`` 1 on a row's
    first n tokens): ``δ_t = r_t + γ·V_{t+1} − V_t`` (V past the last token is 0),
    ``A_t = δ_t + γλ·A_{t+1}``. Returns (advantages, returns = advantages + values), 0 where masked."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        nxt = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + values) * m


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated, as a token mean: ``max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))`` with
    ``ρ = exp(log π − log π_old)``. Returns (loss, clip fraction, approx KL(π_old‖π) = mean ½(log ρ)²)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clipfrac.detach(), approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)``, token mean; returns
    (loss, fraction of tokens where the clipped term is the larger)."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    a, b = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(a, b), mask), masked_mean((b > a).float(), mask).detach()


def iteration_prompts(n: int, batch: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices of one iteration: consecutive slices of seeded permutations, one per pass."""
    out = []
    for pos in range(iteration * batch, (iteration + 1) * batch):
        epoch, k = divmod(pos, n)
        out.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))[k].item())
    return out


# -- per-token model outputs -------------------------------------------------------------------------


def _compact(full: torch.Tensor, sel: torch.Tensor, width: int) -> torch.Tensor:
    """Entries of ``full`` [B, T] where ``sel`` is true, left-aligned per row into [B, width] (0 after)."""
    rows, cols = sel.nonzero(as_tuple=True)
    rank = (sel.cumsum(dim=1) - 1)[rows, cols]
    out = full.new_zeros((full.shape[0], width))
    return out.index_put((rows, rank), full[rows, cols])


def _reply_sel(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, 1:] != IGNORE_INDEX


def token_logps(model: nn.Module, ids: torch.Tensor, att: torch.Tensor, labels: torch.Tensor, width: int,
                temperature: float = 1.0) -> torch.Tensor:
    """``log π(a_t | prefix)`` of each reply token, left-aligned [B, width] (float32, differentiable);
    logits are divided by ``temperature``, the distribution the samples were drawn from."""
    lm = _causal_lm(model)
    hidden = lm.model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    sel = _reply_sel(labels)
    logits = lm.lm_head(hidden[:, :-1][sel]).float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(1, labels[:, 1:][sel].unsqueeze(1)).squeeze(1)
    full = torch.zeros(sel.shape, dtype=lp.dtype, device=lp.device).index_put(sel.nonzero(as_tuple=True), lp)
    return _compact(full, sel, width)


def token_values(value_model: nn.Module, ids: torch.Tensor, att: torch.Tensor, labels: torch.Tensor,
                 width: int) -> torch.Tensor:
    """The value head at the positions that predict each reply token (the state before it), [B, width]."""
    hidden = value_model.model(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    v = value_model.score(hidden[:, :-1]).squeeze(-1).float()
    return _compact(v, _reply_sel(labels), width)


# -- one iteration ----------------------------------------------------------------------------------


@dataclass
class Rollout:
    prompts: list[dict]
    replies: list[str]
    seqs: list[Encoded]
    scores: torch.Tensor  # Rc, [N]
    mask: torch.Tensor  # [N, L]
    old_logps: torch.Tensor
    ref_logps: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    dropped: int = 0


def _batched(fn, seqs: list[Encoded], pad_id: int, width: int, batch: int, dev) -> torch.Tensor:
    """``fn(ids, att, labels)`` -> [b, width] over batches of ``seqs`` (shared by the ranks under torchrun)."""
    def part_fn(part: list[Encoded]) -> torch.Tensor:
        ids, att, lab = pad_right(part, pad_id)
        with torch.no_grad():
            return fn(ids.to(dev), att.to(dev), lab.to(dev)).float()

    out = torch.zeros((len(seqs), width), dtype=torch.float32)
    r = map_rows(part_fn, seqs, batch)
    out[:, : r.shape[1]] = r
    return out


def rollout(policy, ref, value_model, tok, template: Template, prompts: list[dict], score_fn: ScoreFn,
            cfg: PPOStage, seed: int) -> Rollout:
    """Sample, score and evaluate one batch of prompts (no gradient): everything the updates need."""
    from herd.engine.generation import generate

    stops = template.stop_strings(tok)
    # chunk c is what generate(all, batch_size=gen_batch, seed) samples as its c-th batch
    replies = map_chunks(lambda part, c: generate(policy, tok, [template.prompt(p["messages"], tok) for p in part],
                                                  max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                                  top_p=cfg.top_p, top_k=cfg.top_k, stop=stops, batch_size=len(part),
                                                  seed=seed + c * cfg.gen_batch), prompts, cfg.gen_batch)
    keep, seqs = [], []
    for i, (p, r) in enumerate(zip(prompts, replies)):
        try:
            enc = encode_reply(template, tok, p["messages"], r)
        except TemplateError:
            continue
        if enc.n_reply > 0:
            keep.append(i)
            seqs.append(enc)
    if not seqs:
        raise HerdError(f"stage {cfg.name}: no usable sample in this iteration")
    kept_p, kept_r = [prompts[i] for i in keep], [replies[i] for i in keep]
    scores = score_fn([p["messages"] for p in kept_p], kept_r, [bool(p.get("safety")) for p in kept_p]).float()
    width = max(s.n_reply for s in seqs)
    n_reply = torch.tensor([s.n_reply for s in seqs])
    mask = (torch.arange(width).unsqueeze(0) < n_reply.unsqueeze(1)).float()
    dev, pad = device(), tok.pad_token_id
    with autocast(cfg.precision):
        old = _batched(lambda i, a, b: token_logps(policy, i, a, b, width, cfg.temperature), seqs, pad, width,
                       cfg.micro_batch, dev)
        ref_lp = _batched(lambda i, a, b: token_logps(ref, i, a, b, width, cfg.temperature), seqs, pad, width,
                          cfg.micro_batch, dev)
        values = _batched(lambda i, a, b: token_values(value_model, i, a, b, width), seqs, pad, width,
                          cfg.micro_batch, dev)
    old, ref_lp, values = old * mask, ref_lp * mask, values * mask
    rewards = ppo_token_rewards(scores, old, ref_lp, mask, cfg.beta)
    adv, ret = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        adv = masked_whiten(adv, mask)
    return Rollout(kept_p, kept_r, seqs, scores, mask, old, ref_lp, values, rewards, adv, ret,
                   dropped=len(prompts) - len(keep))


class PolicyValue(nn.Module):
    """The policy and the value model as one module (one forward per micro-batch for DDP; one checkpoint)."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, ids, att, labels, width: int, temperature: float):
        return (token_logps(self.policy, ids, att, labels, width, temperature),
                token_values(self.value, ids, att, labels, width))


def ppo_update(pv: PolicyValue, opt, ro: Rollout, cfg: PPOStage, pad_id: int, generator: torch.Generator,
               forward: nn.Module | None = None) -> dict[str, float]:
    """``ppo_epochs`` passes of shuffled mini-batches, one optimizer step each; returns mean stats.

    ``forward`` is ``pv`` wrapped in DDP under torchrun: rank r takes every ``world``-th sample of a
    mini-batch, gradients are averaged, so the step equals the single-process one."""
    forward = forward or pv
    rank, world = dist_env()
    dev = device()
    n = len(ro.seqs)
    p_params = [p for p in pv.policy.parameters() if p.requires_grad]
    v_params = [p for p in pv.value.parameters() if p.requires_grad]
    keys = ("policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl")
    stats: dict[str, list[float]] = {k: [] for k in (*keys, "policy_grad_norm")}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, cfg.mini_batch):
            mb = order[start:start + cfg.mini_batch]
            tokens = float(ro.mask[mb].sum())
            mine = mb[rank::world]
            n_fwd = -(-len(mb[0::world]) // cfg.micro_batch)  # rank 0 has the most: every rank runs as many
            sums = dict.fromkeys(keys, 0.0)
            for f in range(n_fwd):
                idx = mine[f * cfg.micro_batch:(f + 1) * cfg.micro_batch]
                live = bool(idx)
                idx = idx or mb[:1]  # an idle rank joins the gradient sync with a zero-weight forward
                ids, att, lab = pad_right([ro.seqs[j] for j in idx], pad_id)
                ids, att, lab = ids.to(dev), att.to(dev), lab.to(dev)
                w = int(ro.mask[idx].sum(dim=1).max())
                m = ro.mask[idx, :w].to(dev)
                share = float(m.sum()) / tokens if live else 0.0  # token means over the whole mini-batch
                ctx = forward.no_sync() if world > 1 and f < n_fwd - 1 else nullcontext()
                with ctx:
                    with autocast(cfg.precision):
                        lp, v = forward(ids, att, lab, w, cfg.temperature)
                    pl, cf, kl = policy_loss(lp, ro.old_logps[idx, :w].to(dev), ro.advantages[idx, :w].to(dev), m,
                                             cfg.clip)
                    vl, vcf = value_loss(v, ro.values[idx, :w].to(dev), ro.returns[idx, :w].to(dev), m,
                                         cfg.value_clip)
                    ((pl + vl) * (share * world)).backward()  # DDP averages over ranks
                for k, x in zip(keys, (pl, vl, cf, vcf, kl)):
                    sums[k] += float(x.detach()) * share
            if world > 1:
                sums = dict(zip(keys, all_sum([sums[k] for k in keys])))
            gn = torch.nn.utils.clip_grad_norm_(p_params, cfg.grad_clip or float("inf"))
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(v_params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            for k, x in sums.items():
                stats[k].append(x)
            stats["policy_grad_norm"].append(float(gn))
    return {k: sum(v) / len(v) for k, v in stats.items()}


def _optimizer(policy, value_model, cfg: PPOStage) -> torch.optim.Optimizer:
    groups = []
    for model, lr in ((policy, cfg.lr), (value_model, cfg.value_lr or cfg.lr)):
        params = [p for p in model.parameters() if p.requires_grad]
        groups += param_groups(params, cfg.weight_decay, lr=lr)
    return adamw(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)


@dataclass
class PPOResult:
    iterations: int
    history: list[dict]
    seconds: float
    last: Rollout | None
    best: dict | None = None  # early stopping: {"iteration", "heldout_reward", "stopped_at"}


def _save_best(run_dir: Path, policy: nn.Module, rank: int) -> None:
    """The policy's weights as the best so far (atomic: a kill leaves the previous best or this one)."""
    if rank != 0:
        return
    from safetensors.torch import save_file

    tmp = run_dir / "best.safetensors.tmp"
    tensors, _ = _dedupe_shared({k: v.detach().cpu() for k, v in policy.state_dict().items()})
    save_file(tensors, str(tmp))
    tmp.replace(run_dir / "best.safetensors")


def load_best(run_dir: Path, policy: nn.Module) -> None:
    from safetensors.torch import load_file

    policy.load_state_dict(load_file(str(Path(run_dir) / "best.safetensors")), strict=False)


def _iteration_record(it: int, ro: Rollout, st: dict) -> dict:
    """One PPO iteration's metrics line: scores, rewards, KL to the reference, the update's losses."""
    seq_kl = ((ro.old_logps - ro.ref_logps) * ro.mask).sum(dim=1)
    return {"step": it + 1, "loss": st["policy_loss"] + st["value_loss"],
            "score_mean": float(ro.scores.mean()), "reward_mean": float(logit(ro.scores).mean()),
            "kl": float(seq_kl.mean()), "total_reward_mean": float(ro.rewards.sum(dim=1).mean()),
            **st, "reply_tokens": float(ro.mask.sum(dim=1).mean()), "samples": len(ro.seqs),
            "dropped": ro.dropped}


def _early_stopping(best: dict, reward: float, it: int, cfg: PPOStage, run_dir: Path, policy, rank: int) -> bool:
    """Llama 2's early stopping on held-out prompts: keep the best evaluated policy (best.safetensors) and
    stop after ``patience`` evaluations without improvement; updates ``best`` and returns whether to stop."""
    if best["heldout_reward"] is None or reward > best["heldout_reward"]:
        best.update(iteration=it + 1, heldout_reward=reward, bad=0)
        _save_best(run_dir, policy, rank)
        return False
    best["bad"] += 1
    stop = bool(cfg.patience) and best["bad"] >= cfg.patience and it + 1 < cfg.iterations
    if stop:
        best["stopped_at"] = it + 1
    return stop


def train_ppo(policy, ref, value_model, tok, template: Template, prompts: list[dict], score_fn: ScoreFn,
              cfg: PPOStage, run_dir: Path, *, resume: bool = False, progress: bool = True,
              evaluate: Callable[[], dict] | None = None) -> PPOResult:
    """Train ``policy`` and ``value_model`` in place for ``cfg.iterations``; ``run_dir`` holds
    ``checkpoint/`` and ``metrics.jsonl``. ``ref`` is never updated. With ``cfg.eval_every`` and
    ``evaluate`` (the held-out greedy reward of the current policy), the best evaluated iteration's
    policy is kept in ``run_dir/best.safetensors`` and training stops after ``cfg.patience`` evaluations
    without improvement."""
    run_dir = Path(run_dir)
    rank, world = dist_env()
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = device()
    for m in (policy, ref, value_model):
        m.to(dev)
        m.eval()
    ref.requires_grad_(False)
    pv = PolicyValue(policy, value_model)
    forward = pv
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        forward = DDP(pv)
    opt = _optimizer(policy, value_model, cfg)
    start, history = 0, []
    best = {"iteration": None, "heldout_reward": None, "bad": 0, "stopped_at": None}
    if resume and (found := find_checkpoint(run_dir)) is not None:
        state = load_checkpoint(found, pv, opt)
        start, history = state["iteration"], state["history"]
        best = state.get("best", best)
    metrics_path = run_dir / "metrics.jsonl"
    if rank == 0:
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))
    early = bool(cfg.eval_every and evaluate is not None)
    kill_after = int(os.environ.get("HERD_TEST_KILL_AFTER_STEP", "0"))  # tests: kill -9 at a known point
    bar = Progress(total=cfg.iterations, initial=start, desc=cfg.name, unit="iteration",
                   enabled=progress and rank == 0)
    t0 = time.perf_counter()
    ro = None
    for it in range(start, cfg.iterations):
        idx = iteration_prompts(len(prompts), cfg.batch_size, it, cfg.seed)
        ro = rollout(policy, ref, value_model, tok, template, [prompts[i] for i in idx], score_fn, cfg,
                     seed=cfg.seed + 7919 * it)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        st = ppo_update(pv, opt, ro, cfg, tok.pad_token_id, gen, forward)
        rec = _iteration_record(it, ro, st)
        stop = False
        if early and ((it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations):
            rec["heldout_reward"] = evaluate()["reward_mean"]
            stop = _early_stopping(best, rec["heldout_reward"], it, cfg, run_dir, policy, rank)
        rec["elapsed"] = round(time.perf_counter() - t0, 3)
        history.append(rec)
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(reward=f"{rec['reward_mean']:.3f}", kl=f"{rec['kl']:.3f}")
        bar.update(1)
        if stop:
            if rank == 0:
                print(f"[{cfg.name}] early stop at iteration {it + 1}: held-out reward has not improved on "
                      f"{best['heldout_reward']:.4f} (iteration {best['iteration']}) for {cfg.patience} evaluations")
            break
        if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save_checkpoint(run_dir / "checkpoint", pv, opt, {"iteration": it + 1, "history": history, "best": best},
                            rank)
            if kill_after and it + 1 >= kill_after and rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    if early and best["iteration"] is not None and best["iteration"] != len(history):
        barrier()  # rank 0 wrote best.safetensors
        load_best(run_dir, policy)
    return PPOResult(len(history), history, time.perf_counter() - t0, ro,
                     {k: v for k, v in best.items() if k != "bad"} if early else None)


# -- the stage ------------------------------------------------------------------------------------


def reward_scores(scorer) -> ScoreFn:
    """Rc in (0, 1) from a :class:`herd.stages.rejection_sampling.Scorer`: the combined reward with a safety model,
    σ(raw score) with the helpfulness model alone (so logit(Rc) is the raw score back)."""
    def fn(prompts, replies, is_safety):
        out = scorer(prompts, replies, is_safety)
        return out if scorer.safety is not None else torch.sigmoid(out)
    return fn


def greedy_reward(model, tok, template: Template, prompts: list[dict], score_fn: ScoreFn, cfg: PPOStage) -> dict:
    """Distribution of Rc (and its mean logit, the raw reward) of greedy replies to ``prompts``."""
    from herd.stages.sampling import distribution, greedy_replies

    if not prompts:
        return {"n": 0}
    replies = greedy_replies(model, tok, template, prompts, cfg.max_new_tokens, cfg.gen_batch)
    rc = score_fn([p["messages"] for p in prompts], replies, [bool(p.get("safety")) for p in prompts])
    return {**distribution(rc), "reward_mean": round(float(logit(rc).mean()), 5)}


def _prompt_len(template: Template, tok, p: dict) -> int:
    return len(tok(template.prompt(p["messages"], tok), add_special_tokens=False)["input_ids"])


def run_ppo(cfg: PPOStage, parent: BaseRef, template: Template, out: Path, *, name: str, resume: bool = False,
            recipe: dict | None = None, progress: bool = True, workspace: Path | None = None) -> tuple[Path, dict]:
    """PPO of the parent against the stage's reward model(s); writes the artifact at ``out``."""
    from transformers import LlamaForSequenceClassification

    from herd.data.report import DataReport
    from herd.engine.reward_model import load_reward_model
    from herd.stages.sampling import Scorer, load_prompts, resolve_reward_model, split_prompts

    rank, world = dist_env()
    report = DataReport()
    prompts, data_records = load_prompts(cfg.data, relative_to=recipe_dir(recipe), report=report)
    tok = load_tokenizer(parent)
    n_read = len(prompts)
    prompts = [p for p in prompts if _prompt_len(template, tok, p) <= cfg.max_prompt_len]
    too_long = n_read - len(prompts)
    train_p, held_p = split_prompts(prompts, cfg)
    work = out.with_name(out.name + ".work")
    if not resume and rank == 0:
        shutil.rmtree(work, ignore_errors=True)
    helpful = load_reward_model(resolve_reward_model(cfg.reward_model, workspace, recipe), template)
    safety = (load_reward_model(resolve_reward_model(cfg.safety_reward_model, workspace, recipe), template)
              if cfg.safety_reward_model else None)
    score_fn = reward_scores(Scorer(helpful, safety, cfg.safety_threshold, cfg.score_batch))
    dev = device()
    policy = load_model(parent).to(dev)
    ref = load_model(parent).to(dev)
    torch.manual_seed(cfg.seed)  # the value head's initialisation
    value_model = LlamaForSequenceClassification.from_pretrained(str(parent.path), num_labels=1,
                                                                 dtype=torch.float32).to(dev)
    if progress and rank == 0:
        print(f"[{cfg.name}] {len(train_p)} training / {len(held_p)} held-out prompts; {cfg.iterations} "
              f"iterations x {cfg.batch_size} samples" + (f"; {too_long} prompts over max_prompt_len" if too_long
                                                         else ""))
    before = greedy_reward(policy, tok, template, held_p, score_fn, cfg)
    if cfg.eval_every and not held_p:
        raise HerdError(f"stage {cfg.name}: eval_every needs held-out prompts (eval_size > 0)")
    result = train_ppo(policy, ref, value_model, tok, template, train_p, score_fn, cfg, work, resume=resume,
                       progress=progress, evaluate=lambda: greedy_reward(policy, tok, template, held_p, score_fn, cfg))
    after = greedy_reward(policy, tok, template, held_p, score_fn, cfg)
    hist = result.history

    def first_last(key):
        return [round(hist[0][key], 5), round(hist[-1][key], 5)] if hist else None

    summary = {"steps": result.iterations, "iterations": result.iterations, "train_prompts": len(train_p),
               "heldout_prompts": len(held_p), "seconds": round(result.seconds, 1), "beta": cfg.beta,
               "first_loss": hist[0]["loss"] if hist else None, "final_loss": hist[-1]["loss"] if hist else None,
               "reward_mean_first_last": first_last("reward_mean"), "kl_first_last": first_last("kl"),
               "clip_frac_mean": round(sum(h["clip_frac"] for h in hist) / len(hist), 5) if hist else None,
               "heldout_greedy_reward_parent": before, "heldout_greedy_reward": after,
               "reward_models": [str(helpful.path)] + ([str(safety.path)] if safety else []),
               "value_model": "separate: scalar head on a copy of the parent",
               **({"early_stopping": {"eval_every": cfg.eval_every, "patience": cfg.patience, **result.best}}
                  if result.best else {}),
               "data": {"read": report.as_dict(), "prompts": n_read, "over_max_prompt_len": too_long},
               "world_size": world}
    if rank != 0:
        return out, summary
    tmp = staging_dir(out)
    save_model_folder(policy.cpu(), tok, template, tmp)
    if result.last is not None:  # the last iteration's samples, for inspection
        ro = result.last
        with open(tmp / "ppo_samples.jsonl", "w") as f:
            for p, r, s in zip(ro.prompts, ro.replies, ro.scores.tolist()):
                f.write(json.dumps({"prompt": p["messages"], "reply": r, "score": round(s, 5)},
                                   ensure_ascii=False) + "\n")
    md = (f"PPO (β {cfg.beta}, {result.iterations} iterations x {cfg.batch_size} samples): held-out greedy mean "
          f"reward {before.get('reward_mean')} (parent) → {after.get('reward_mean')}.")
    finish_artifact(tmp, out, name=name, parent=parent, template_rec=template_record(template, tok), cfg=cfg,
                    recipe=recipe, data=data_records, metrics=summary, history=hist, extra_md=md)
    shutil.rmtree(work, ignore_errors=True)
    return out, summary


@STAGES.register("ppo")
def run(cfg: PPOStage, ctx: StageContext) -> tuple[Path, dict]:
    """The registered entry point: ``herd derive`` calls every stage kind this way."""
    return run_ppo(cfg, ctx.parent, ctx.template, ctx.out, name=ctx.name, resume=ctx.resume, recipe=ctx.recipe,
                   progress=ctx.progress, workspace=ctx.workspace)

__all__ = ["gae", "greedy_reward", "iteration_prompts", "masked_whiten", "policy_loss", "ppo_update", "rollout",
           "PolicyValue", "run_ppo", "token_logps", "token_values", "train_ppo", "value_loss"]
