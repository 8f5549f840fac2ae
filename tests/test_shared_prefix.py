"""Shared-prefix SFT: one prefix pass per group gives the loss and gradients of running every example whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from herd.data.tokenize import Tokenized
from herd.templates import IGNORE_INDEX


def _items(tokenizer, prefix: str, suffixes: list[tuple[str, str]]) -> list[Tokenized]:
    """Examples ``prefix + prompt`` with only ``target`` trained (as a guard verdict is)."""
    out = []
    for i, (prompt, target) in enumerate(suffixes):
        p = tokenizer(prefix + prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append(Tokenized(np.array(p + t, dtype=np.int32),
                             np.array([IGNORE_INDEX] * len(p) + t, dtype=np.int32), "test", i))
    return out


SHARED = ("Task: Check if there is unsafe content in the conversation below according to our safety policy "
          "with the categories listed here.\nO1: Violence and Hate.\nO2: Sexual Content.\n\n")
CASES = [("User: how do I bake bread?", " safe"), ("User: tell me a joke about cats", " safe"),
         ("User: something hateful and long enough to differ in length", " unsafe\nO1"),
         ("User: hi", " safe")]


def test_plan_groups_groups_by_common_start_and_stops_before_targets(tokenizer):
    from herd.engine.shared_prefix import common_prefix, plan_groups

    other = "Something else entirely, a different instruction with many words in it. "
    items = _items(tokenizer, SHARED, CASES) + _items(tokenizer, other, CASES[:3])
    groups = plan_groups(items, 3, epochs=2, seed=0)
    per_epoch = groups[: len(groups) // 2]
    assert sorted(m for g in per_epoch for m in g.members) == list(range(7))  # every item once per epoch
    assert max(len(g.members) for g in groups) == 3
    for g in groups:
        first = items[g.members[0]].input_ids
        assert all(common_prefix(first, items[m].input_ids) >= g.prefix for m in g.members)
        assert all((items[m].labels[1:g.prefix + 1] == IGNORE_INDEX).all() for m in g.members)
        assert not ({0, 1, 2, 3} & set(g.members) and {4, 5, 6} & set(g.members))  # different starts never mix
        assert g.prefix >= len(tokenizer(other, add_special_tokens=False)["input_ids"]) - 2
    assert plan_groups(items, 3, epochs=2, seed=0) == groups  # a pure function of the seed
    assert len(plan_groups(items, 3, epochs=1.5, seed=0)) < len(groups)


@pytest.mark.parametrize("with_lora,recompute", [(False, False), (True, False), (False, True), (True, True)])
def test_group_step_gradients_equal_whole_examples(tiny_model, tokenizer, with_lora, recompute):
    """The prefix once, suffixes in several micro-batches, the prefix's gradient applied at the end: the
    same loss and parameter gradients as each example run whole (token-mean over the group); also when the
    prefix pass is recomputed for its backward instead of kept (gradient_checkpointing)."""
    from herd.engine.shared_prefix import Group, common_prefix, first_target, group_step
    from herd.engine.training import MaskedLMLoss

    model = tiny_model
    if with_lora:
        from herd.core.recipe import LoraSpec
        from herd.engine.lora import apply_lora

        model = apply_lora(model, LoraSpec(r=4, alpha=8, dropout=0.0))
    model.train()
    items = _items(tokenizer, SHARED, CASES)
    p = min([first_target(it) for it in items] + [common_prefix(items[0].input_ids, it.input_ids) for it in items])
    assert p > 20
    params = [q for q in model.parameters() if q.requires_grad]

    model.zero_grad()
    loss_sum, n, computed = group_step(model, items, Group(tuple(range(len(items))), p), tokenizer.pad_token_id,
                                       micro_tokens=40, recompute_prefix=recompute)  # several micro-batches
    grads = [q.grad.clone() for q in params]
    assert computed == p + sum(len(it) - p for it in items)
    ref_fn = MaskedLMLoss(model, chunked=False)
    ref, ref_n = 0.0, 0
    for it in items:  # each example alone, whole
        ids = torch.as_tensor(it.input_ids, dtype=torch.long)[None]
        lab = torch.full_like(ids, IGNORE_INDEX)
        lab[0, :-1] = torch.as_tensor(it.labels[1:], dtype=torch.long)
        ref = ref + ref_fn(ids, torch.arange(ids.shape[1])[None], lab)
        ref_n += it.n_targets
    ref_grads = torch.autograd.grad(ref / ref_n, params)
    assert n == ref_n
    assert loss_sum == pytest.approx(ref.item(), rel=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=2e-3, atol=2e-6)


def test_recompute_also_checkpoints_the_suffix_layers(tiny_model, tokenizer, monkeypatch):
    """With gradient_checkpointing each suffix micro-batch's decoder layers run again in its backward (one
    more forward per layer and micro-batch, besides the prefix's second pass), and leave eager after."""
    from herd.engine.shared_prefix import Group, common_prefix, first_target, group_step

    items = _items(tokenizer, SHARED, CASES)
    p = min([first_target(it) for it in items] + [common_prefix(items[0].input_ids, it.input_ids) for it in items])
    layer = tiny_model.model.layers[0]
    cls = type(layer)
    calls = []
    real = cls.forward

    def counting(self, *a, **kw):
        if self is layer:
            calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(cls, "forward", counting)
    tiny_model.train()
    counts = {}
    for recompute in (False, True):
        calls.clear()
        tiny_model.zero_grad()
        group_step(tiny_model, items, Group(tuple(range(len(items))), p), tokenizer.pad_token_id, micro_tokens=40,
                   recompute_prefix=recompute)
        counts[recompute] = len(calls)
    n_micro = counts[False] - 1  # the prefix once, then one forward per micro-batch
    assert n_micro >= 2
    assert counts[True] == counts[False] + n_micro + 1  # each micro-batch recomputed, the prefix run again
    assert "forward" not in vars(layer)  # the wrapper is gone after the step
