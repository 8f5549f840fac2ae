"""SFT on examples that share a long prompt prefix: the prefix runs once per step, every example reuses it.

Why: a Llama Guard record is ~790 prompt tokens of which ~700 are the same taxonomy text, and only the
1-7 verdict tokens are trained. Packed rows spend the whole budget re-reading that text. Here examples
whose token sequences start alike are grouped (one group = one optimizer step); the group's common
prefix goes through the model once and only the members' suffixes are computed per example, in
micro-batches that read the prefix's keys and values. The prefix's keys/values are a gradient boundary:
each micro-batch's backward accumulates their gradient, and one backward through the prefix pass at the
end of the step applies it, so the weights get exactly the gradient of running every member whole
(tested). The loss is the step's token mean over trained tokens, as in :func:`herd.engine.training.train`.

Groups come from the items' shared-prefix tree: items sorted by their tokens, a run of neighbours
split where they diverge whenever that lowers the tokens computed. They are a pure function of the
items and the seed (members re-drawn per epoch within each run) and run in the loop's seeded order, so
a killed run resumes exactly (:func:`herd.engine.training.optimise`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from herd.data.tokenize import Tokenized
from herd.engine.cross_entropy import linear_cross_entropy
from herd.engine.kv import CACHE_KW, common_prefix  # noqa: F401  (callers import it from here too)
from herd.engine.training import (
    LoopConfig,
    LoopResult,
    StepOut,
    causal_lm,
    device,
    dist_env,
    optimise,
    plan_steps,
)
from herd.templates import IGNORE_INDEX

SUFFIX_CHECKPOINT = True  # gradient_checkpointing also checkpoints the suffix layers (False: bench baseline)


@dataclass(frozen=True)
class Group:
    members: tuple[int, ...]  # item indices
    prefix: int  # shared tokens computed once


def first_target(it: Tokenized) -> int:
    """The position that predicts the first trained token: a prefix must end at or before it, so every
    trained prediction is made in the suffix pass."""
    hit = np.flatnonzero(it.labels[1:] != IGNORE_INDEX)
    return int(hit[0]) if len(hit) else len(it) - 1


def prefix_runs(items: list[Tokenized], group_size: int) -> list[tuple[list[int], int]]:
    """Runs of items (sorted by tokens) with the prefix their groups will share, chosen on the items'
    common-prefix tree to compute the fewest tokens: a run is split where its members diverge when
    the parts, each cut into groups of ``group_size``, cost less than the run does."""
    order = sorted(range(len(items)), key=lambda i: items[i].input_ids.astype(">u4").tobytes())
    lcp = [0] + [common_prefix(items[a].input_ids, items[b].input_ids) for a, b in zip(order, order[1:])]
    cap = [first_target(items[i]) for i in order]
    size = [len(items[i]) for i in order]

    def best(a: int, b: int) -> tuple[float, list[tuple[list[int], int]]]:
        if b - a == 1:
            return size[a], [([order[a]], cap[a])]
        c = min(lcp[a + 1:b])
        p = min(c, min(cap[a:b]))
        whole = math.ceil((b - a) / group_size) * p + sum(size[a:b]) - (b - a) * p
        cuts = [a] + [i for i in range(a + 1, b) if lcp[i] == c] + [b]
        if p < c or len(cuts) == 2:  # splitting cannot lengthen the prefix (capped by a target)
            return whole, [(order[a:b], p)]
        parts = [best(x, y) for x, y in zip(cuts, cuts[1:])]
        split = sum(cost for cost, _ in parts)
        if split < whole:
            return split, [run for _, runs in parts for run in runs]
        return whole, [(order[a:b], p)]

    import sys

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * len(items) + 100))
    return best(0, len(items))[1] if items else []


def plan_groups(items: list[Tokenized], group_size: int, *, epochs: float = 1.0, seed: int = 42) -> list[Group]:
    """Groups of at most ``group_size`` items for every epoch (members drawn anew each epoch within each
    run; a fractional last epoch keeps that share of its groups)."""
    runs = prefix_runs(items, group_size)
    out: list[Group] = []
    for epoch in range(math.ceil(epochs)):
        rng = random.Random(f"{seed}:{epoch}")
        groups = []
        for members, p in runs:
            members = list(members)
            rng.shuffle(members)
            for k in range(0, len(members), group_size):
                chunk = tuple(members[k:k + group_size])
                first = items[chunk[0]].input_ids
                shared = min([p] + [common_prefix(first, items[m].input_ids) for m in chunk[1:]]
                             + [first_target(items[m]) for m in chunk])
                groups.append(Group(chunk, shared))
        if epoch + 1 > epochs:
            rng.shuffle(groups)
            groups = groups[: int(round((epochs - epoch) * len(groups)))]
        out += groups
    return out


def reading_cache(keys_values: list[tuple[torch.Tensor, torch.Tensor]], config, rows: int):
    """The prefix's keys and values for ``rows`` suffixes, in a cache that suffix layers read but never
    extend: ``update`` returns prefix + new without storing, so a checkpointed layer's recompute in the
    backward sees exactly what its first run saw."""
    from transformers import DynamicCache

    class PrefixCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]
            return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    cache = PrefixCache(config=config)
    for i, (k, v) in enumerate(keys_values):
        DynamicCache.update(cache, k, v, i)  # the one place the prefix is stored
    cache.batch_repeat_interleave(rows)
    return cache


@contextmanager
def checkpointed(layers, enabled: bool) -> Iterator[None]:
    """Inside: each decoder layer keeps only its inputs and recomputes the rest in the backward
    (``torch.utils.checkpoint``, non-reentrant: autocast and RNG state are replayed). transformers' own
    gradient checkpointing cannot be used here: it turns the cache off, and the suffixes need the prefix's."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    def wrap(fwd):
        return lambda *a, **kw: checkpoint(fwd, *a, use_reentrant=False, **kw)

    for layer in layers:
        layer.forward = wrap(layer.forward)  # an instance attribute over the class's method
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def recorded_kv(decoder, **inputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's keys and values of a forward of ``decoder`` (a LlamaModel) on ``inputs``
    (``input_ids`` or ``inputs_embeds``), WITH their graph: a recorder stands in for the cache, so a layer
    recomputed under :func:`checkpointed` records the same again instead of appending (a DynamicCache
    would hand the recompute twice the keys)."""
    from transformers import DynamicCache

    class Recorder(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            kv[layer_idx] = (key_states, value_states)
            return key_states, value_states

    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    decoder(**inputs, **{CACHE_KW: Recorder(config=decoder.config)}, use_cache=True)
    return [kv[i] for i in range(len(kv))]


def embedded_once(decoder, prefix: list[int], kw: dict) -> tuple[torch.Tensor, dict]:
    """The prefix's and the rows' embeddings (``kw``: forward arguments with ``input_ids``) from ONE
    lookup, so the backward sends the embedding matrix one dense gradient of its full size, not two.
    Returns (prefix embeddings, ``kw`` with ``inputs_embeds`` instead of ``input_ids``)."""
    ids = kw["input_ids"]
    flat = torch.cat([torch.tensor(prefix, dtype=torch.long, device=ids.device), ids.reshape(-1)])
    emb = decoder.embed_tokens(flat)
    rest = {k: v for k, v in kw.items() if k != "input_ids"}
    return emb[: len(prefix)][None], rest | {"inputs_embeds": emb[len(prefix):].view(*ids.shape, -1)}


def rows_after_prompt(decoder, rows: list[list[int]], upto: int, pad_id: int, *,
                      checkpoint: bool = False) -> tuple[torch.Tensor, int]:
    """(last hidden states WITH their graph, ``shared``) of ``rows`` (right-padded) that start with the
    same ``upto`` tokens, from position ``shared`` on: that shared part runs once and every row's rest
    reads its keys and values, which carry the gradient back into its pass. ``shared`` is ``upto``, or 0
    (the rows whole) when ``upto`` is below ``PREFIX_MIN``. ``checkpoint``: each decoder layer keeps only
    its input and recomputes the rest in the backward (transformers' own checkpointing would drop the
    cache)."""
    from herd.engine.kv import PREFIX_MIN, after_prefix

    shared = upto if upto >= PREFIX_MIN else 0
    dev = decoder.embed_tokens.weight.device
    with checkpointed(decoder.layers, checkpoint):
        kw = after_prefix(rows, shared, None, pad_id, dev)
        if shared:
            width = kw["input_ids"].shape[1]
            prefix, kw = embedded_once(decoder, list(rows[0][:shared]), kw)
            kv = recorded_kv(decoder, inputs_embeds=prefix)
            kw |= {CACHE_KW: reading_cache(kv, decoder.config, len(rows)), "use_cache": True,
                   "position_ids": torch.arange(shared, shared + width, device=dev)[None].expand(len(rows), -1)}
        return decoder(**kw).last_hidden_state, shared


def _prefix_kv(lm, ids: torch.Tensor, amp) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's keys and values of the prefix ``ids`` (1, p): one forward pass into a fresh cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    with amp():
        lm.model(input_ids=ids, cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def group_step(model, items: list[Tokenized], group: Group, pad_id: int, *, micro_tokens: int = 4096,
               amp=None, recompute_prefix: bool = False) -> tuple[float, int, int]:
    """Forward and backward of one group: the prefix once, the suffixes in micro-batches of at most
    ``micro_tokens`` padded tokens; gradients (of the token-mean loss) accumulate in the parameters.
    Returns (sum of the trained tokens' losses, their count, tokens computed).

    ``recompute_prefix`` (the stage's ``gradient_checkpointing``) runs the prefix without a graph and
    again, with one, for its backward at the end: the prefix's activations (and its bf16 weight copies)
    are not held while the suffixes run, for one more prefix forward per step. It also checkpoints the
    suffixes' decoder layers: each keeps its input and recomputes the rest in its backward."""
    amp = amp or nullcontext
    lm = causal_lm(model)
    dev = lm.lm_head.weight.device
    members = sorted((items[m] for m in group.members), key=len)
    p = group.prefix
    n_total = sum(int(np.count_nonzero(it.labels[p + 1:] != IGNORE_INDEX)) for it in members)
    kv, leaves, prefix_ids = [], [], None
    if p:
        prefix_ids = torch.as_tensor(members[0].input_ids[:p], dtype=torch.long, device=dev)[None]
        trainable = any(q.requires_grad for q in model.parameters())  # without a graph, kv cannot tell
        with torch.no_grad() if recompute_prefix else nullcontext():
            kv = _prefix_kv(lm, prefix_ids, amp)
        leaves = [tuple(t.detach().requires_grad_(trainable if recompute_prefix else t.requires_grad) for t in pair)
                  for pair in kv]
    total, computed, start = 0.0, p, 0
    while start < len(members):
        stop = start + 1  # members are sorted by length: the last one sets the padded width
        while stop < len(members) and (stop + 1 - start) * (len(members[stop]) - p) <= micro_tokens:
            stop += 1
        batch = members[start:stop]
        start = stop
        width = len(batch[-1]) - p
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, it in enumerate(batch):
            n = len(it) - p
            ids[r, :n] = torch.from_numpy(it.input_ids[p:].astype(np.int64))
            labels[r, :n - 1] = torch.from_numpy(it.labels[p + 1:].astype(np.int64))  # next-token targets
            mask[r, p:p + n] = 1
            computed += n
        labels = labels.to(dev)
        sel = labels != IGNORE_INDEX
        if not bool(sel.any()):
            continue
        kw = {"cache": reading_cache(leaves, lm.config, len(batch)), "use_cache": True} if p else {"use_cache": False}
        with amp(), checkpointed(lm.model.layers, recompute_prefix and SUFFIX_CHECKPOINT):
            hidden = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                              position_ids=torch.arange(p, p + width, device=dev)[None].expand(len(batch), -1),
                              **kw).last_hidden_state
            loss = linear_cross_entropy(hidden[sel], lm.lm_head.weight, labels[sel])
        (loss / max(1, n_total)).backward()
        total += float(loss.detach())
    if p and recompute_prefix and any(leaf.grad is not None for pair in leaves for leaf in pair):
        kv = _prefix_kv(lm, prefix_ids, amp)  # the same keys and values, now with their graph
    grads = [(t, leaf.grad) for pair, lpair in zip(kv, leaves) for t, leaf in zip(pair, lpair)
             if leaf.grad is not None and t.requires_grad]
    if grads:  # the prefix pass, once, with the gradient every member sent its keys and values
        torch.autograd.backward([t for t, _ in grads], grad_tensors=[g for _, g in grads])
    return total, n_total, computed


def train_shared_prefix(model, items: list[Tokenized], cfg: LoopConfig, run_dir: Path, *, pad_id: int,
                        resume: bool = False, desc: str = "train") -> tuple[LoopResult, dict]:
    """Train ``model`` in place, one prefix group of up to ``cfg.global_batch`` examples per optimizer
    step; returns the loop's result (``tokens``: the examples' whole lengths, as packed training counts
    them) and a report of the grouping. Single process: the groups are not sharded across ranks."""
    from herd.core.errors import HerdError
    from herd.engine.training import autocast

    if dist_env()[1] > 1:
        raise HerdError("shared_prefix training runs in one process (under torchrun, set shared_prefix: false)")
    groups = plan_groups(items, cfg.global_batch, epochs=cfg.epochs, seed=cfg.seed)
    loop = replace(cfg, epochs=1.0, global_batch=1)
    plan = plan_steps(len(groups), loop)
    torch.manual_seed(cfg.seed)
    model.to(device())
    model.train()

    def step_fn(step: int) -> StepOut:
        g = groups[plan[step][0]]
        loss, n, _ = group_step(model, items, g, pad_id, micro_tokens=cfg.micro_batch_rows * cfg.row_len,
                                amp=lambda: autocast(cfg.precision), recompute_prefix=cfg.gradient_checkpointing)
        return StepOut(loss=loss / max(1, n), fields={"examples": len(g.members), "prefix_tokens": g.prefix,
                                                      "trained_tokens": n},
                       tokens=sum(len(items[m]) for m in g.members))

    result = optimise(model, loop, Path(run_dir), len(plan), step_fn, resume=resume, desc=desc)
    used = [groups[s[0]] for s in plan[: result.steps]]
    result.tokens = sum(len(items[m]) for g in used for m in g.members)
    result.trained_tokens = sum(items[m].n_targets for g in used for m in g.members)
    computed = sum(g.prefix + sum(len(items[m]) - g.prefix for m in g.members) for g in used)
    report = {"groups": len(groups), "steps": result.steps,
              "examples_per_group": round(sum(len(g.members) for g in groups) / max(1, len(groups)), 2),
              "mean_prefix_tokens": round(sum(g.prefix for g in groups) / max(1, len(groups)), 1),
              "tokens_computed": computed, "tokens_as_packed": result.tokens,
              "saving": round(result.tokens / computed, 2) if computed else None}
    return result, report
