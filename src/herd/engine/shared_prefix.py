"""SFT on examples that share a long prompt prefix: the prefix runs once per step, every example reuses it.

Why: a Llama Guard record is ~790 prompt tokens of which ~700 are the same taxonomy text, and only the
1-7 verdict tokens are trained. Packed rows spend the whole budget re-reading that text. Here examples
whose token sequences start alike are grouped (one group = one optimizer step); the group's common
prefix goes through the model once, its keys and values are repeated for every member (a view in the
autograd graph, so gradients from every member flow back through the prefix, exactly as if each member
had been run whole), and only the members' suffixes are computed per example. The loss is the step's
token mean over trained tokens, as in :func:`herd.engine.training.train`.

The groups are a pure function of the items and the seed (re-drawn each epoch within each prefix run),
and the step order is the loop's seeded plan, so a killed run resumes exactly
(:func:`herd.engine.pair_loop.train_items` over :func:`herd.engine.training.optimise`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from herd.data.tokenize import Tokenized
from herd.engine.cross_entropy import linear_cross_entropy
from herd.engine.training import LoopConfig, LoopResult, causal_lm, plan_steps
from herd.templates import IGNORE_INDEX


@dataclass(frozen=True)
class Group:
    members: tuple[int, ...]  # item indices
    prefix: int  # shared tokens computed once


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _first_target(it: Tokenized) -> int:
    """Index of the first token predicted as a target: the prefix must end before the position that
    predicts it, so every trained prediction is made in the suffix pass."""
    hit = np.flatnonzero(it.labels[1:] != IGNORE_INDEX)
    return int(hit[0]) if len(hit) else len(it) - 1


def plan_groups(items: list[Tokenized], group_size: int, *, min_prefix: int = 32, epochs: float = 1.0,
                seed: int = 42) -> list[Group]:
    """Groups of at most ``group_size`` items sharing at least ``min_prefix`` leading tokens, for every
    epoch (a fractional last epoch keeps that share of the groups). Items are sorted by their tokens,
    so those with a common start are neighbours; each run of neighbours is shuffled per epoch and cut."""
    order = sorted(range(len(items)), key=lambda i: items[i].input_ids.tobytes())
    runs: list[list[int]] = []
    for i in order:
        if runs and common_prefix(items[runs[-1][0]].input_ids, items[i].input_ids) >= min_prefix:
            runs[-1].append(i)
        else:
            runs.append([i])
    out: list[Group] = []
    for epoch in range(math.ceil(epochs)):
        rng = random.Random(f"{seed}:{epoch}")
        groups = []
        for run in runs:
            run = list(run)
            rng.shuffle(run)
            for k in range(0, len(run), group_size):
                members = tuple(run[k:k + group_size])
                p = min(_first_target(items[m]) for m in members)
                first = items[members[0]].input_ids
                p = min([p] + [common_prefix(first, items[m].input_ids) for m in members[1:]])
                groups.append(Group(members, max(0, p)))
        if epoch + 1 > epochs:
            rng.shuffle(groups)
            groups = groups[: int(round((epochs - epoch) * len(groups)))]
        out += groups
    return out


def group_loss(model, items: list[Tokenized], group: Group, pad_id: int) -> tuple[torch.Tensor, int]:
    """Sum of the group's trained-token cross-entropies (prefix once, suffixes batched), and their count."""
    from transformers import DynamicCache

    lm = causal_lm(model)
    dev = lm.lm_head.weight.device
    members = [items[m] for m in group.members]
    p = group.prefix
    cache = DynamicCache(config=lm.config)
    if p:
        prefix = torch.as_tensor(members[0].input_ids[:p], dtype=torch.long, device=dev)[None]
        lm.model(input_ids=prefix, cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(members))  # one view per member: gradients sum into the prefix
    width = max(len(it) for it in members) - p
    ids = torch.full((len(members), width), pad_id, dtype=torch.long)
    labels = torch.full((len(members), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(members), p + width), dtype=torch.long)
    mask[:, :p] = 1
    for r, it in enumerate(members):
        n = len(it) - p
        ids[r, :n] = torch.from_numpy(it.input_ids[p:].astype(np.int64))
        labels[r, :n - 1] = torch.from_numpy(it.labels[p + 1:].astype(np.int64))  # next-token targets
        mask[r, p:p + n] = 1
    pos = torch.arange(p, p + width)[None].expand(len(members), -1)
    hidden = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                      cache=cache if p else None, use_cache=bool(p)).last_hidden_state
    sel = labels.to(dev) != IGNORE_INDEX
    n_targets = int(sel.sum())
    return linear_cross_entropy(hidden[sel], lm.lm_head.weight, labels.to(dev)[sel]), n_targets


def train_shared_prefix(model, items: list[Tokenized], cfg: LoopConfig, run_dir: Path, *, pad_id: int,
                        resume: bool = False, min_prefix: int = 32, desc: str = "train") -> tuple[LoopResult, dict]:
    """Train ``model`` in place, one prefix group of up to ``cfg.global_batch`` examples per step; returns
    the loop's result (``tokens``: the examples' full lengths, as packed training would count them) and a
    report of the grouping (groups, mean prefix, tokens actually computed)."""
    from dataclasses import replace

    from herd.engine.pair_loop import train_items

    groups = plan_groups(items, cfg.global_batch, min_prefix=min_prefix, epochs=cfg.epochs, seed=cfg.seed)

    def loss_fn(idx: list[int]):
        total, n = torch.zeros(()), 0
        for g in idx:
            loss, k = group_loss(model, items, groups[g], pad_id)
            total, n = total + loss / max(1, k), n + k
        return total, {"trained_tokens": n}

    loop = replace(cfg, epochs=1.0, global_batch=1, micro_batch=1, compile="off")
    result = train_items(model, len(groups), loss_fn, loop, run_dir, resume=resume, desc=desc)
    used = [groups[step[0]] for step in plan_steps(len(groups), loop)[: result.steps]]  # the loop's order
    result.tokens = sum(len(items[m]) for g in used for m in g.members)
    result.trained_tokens = sum(items[m].n_targets for g in used for m in g.members)
    computed = sum(g.prefix + sum(len(items[m]) - g.prefix for m in g.members) for g in used)
    report = {"groups": len(groups), "steps": result.steps,
              "examples_per_group": round(sum(len(g.members) for g in groups) / max(1, len(groups)), 2),
              "mean_prefix_tokens": round(sum(g.prefix for g in groups) / max(1, len(groups)), 1),
              "tokens_computed": computed, "tokens_as_packed": result.tokens,
              "saving": round(result.tokens / computed, 2) if computed else None}
    return result, report
