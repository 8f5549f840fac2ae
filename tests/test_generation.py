"""The generation engine against transformers' ``generate`` on the tiny random Llama (real tokenizer)."""

from __future__ import annotations

import pytest
import torch

from herd.engine.generation import _pick, generate, generate_ids
from herd.engine.kv import PREFIX_MIN, common_prefix_len

SYSTEM = ("You are a careful assistant. Answer the question below in one short paragraph, citing the "
          "rule you used and nothing else.\n\n")
QUESTIONS = ["What is a llama?", "Name three prime numbers larger than ten.", "Why is the sky blue?",
             "Translate 'good morning' into French, please, and explain the greeting's register."]


def _prompts(tok) -> list[list[int]]:
    return [tok(SYSTEM + q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def _hf_greedy(model, prompts: list[list[int]], steps: int) -> list[list[int]]:
    out = []
    for p in prompts:  # one at a time: no padding, the reference
        ids = torch.tensor([p])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None)
        out.append(gen[0, len(p):].tolist())
    return out


def test_greedy_equals_transformers_generate_with_shared_prefix_and_padding(tiny_model, tokenizer):
    prompts = _prompts(tokenizer)
    assert common_prefix_len(prompts) >= PREFIX_MIN  # the batch runs the shared-prefix path
    assert len({len(p) for p in prompts}) > 1  # and pads in the middle
    ref = _hf_greedy(tiny_model, prompts, 12)
    got = generate_ids(tiny_model, prompts, max_new_tokens=12, batch_size=4)
    assert [s[0].ids for s in got] == ref
    assert all(s[0].finish == "length" for s in got)
    one = generate_ids(tiny_model, prompts, max_new_tokens=12, batch_size=1)  # no prefix, no padding
    assert [s[0].ids for s in one] == ref


def test_stop_ids_and_stop_strings_end_each_sequence_on_its_own(tiny_model, tokenizer):
    prompts = _prompts(tokenizer)
    ref = _hf_greedy(tiny_model, prompts, 12)
    stop_id = ref[0][4]  # the first prompt stops at its fifth token; the others run on unless they meet it
    got = generate_ids(tiny_model, prompts, max_new_tokens=12, stop_ids=[stop_id], batch_size=4)
    for r, (s,) in zip(ref, got):
        cut = r.index(stop_id) if stop_id in r else len(r)
        assert s.ids == r[:cut]
        assert s.finish == ("stop" if cut < len(r) else "length")
    text = tokenizer.decode(ref[1])
    stop = text[len(tokenizer.decode(ref[1][:6])):][:3]  # three characters the second reply makes after token 6
    assert stop.strip() and stop in text
    (s,), = generate_ids(tiny_model, prompts[1:2], max_new_tokens=12, stop_strings=[stop], tokenizer=tokenizer)
    assert s.finish == "stop" and stop in tokenizer.decode(s.ids)
    assert s.ids == ref[1][: len(s.ids)] and stop not in tokenizer.decode(s.ids[:-1])


def test_samples_are_reproducible_per_sequence_whatever_the_batching(tiny_model, tokenizer):
    prompts = _prompts(tokenizer)
    kw = dict(max_new_tokens=8, n=3, temperature=1.0, top_p=0.9, seed=11)
    whole = generate_ids(tiny_model, prompts, batch_size=12, **kw)
    small = generate_ids(tiny_model, prompts, batch_size=2, **kw)
    assert [[s.ids for s in r] for r in whole] == [[s.ids for s in r] for r in small]
    tail = generate_ids(tiny_model, prompts[2:], batch_size=5, **{**kw, "seed": 13})  # prompts[c:], seed + c
    assert [[s.ids for s in r] for r in tail] == [[s.ids for s in r] for r in whole[2:]]
    assert all(len({tuple(s.ids) for s in r}) > 1 for r in whole)  # the K samples of a prompt differ
    other = generate_ids(tiny_model, prompts, batch_size=12, **{**kw, "seed": 12})
    assert [[s.ids for s in r] for r in other] != [[s.ids for s in r] for r in whole]
    # any subset, in any order, draws what the whole call drew when it passes the prompts' own stream ids
    pick = [3, 0, 2]
    some = generate_ids(tiny_model, [prompts[i] for i in pick], batch_size=4, stream_ids=pick, **kw)
    assert [[s.ids for s in r] for r in some] == [[s.ids for s in whole[i]] for i in pick]
    with pytest.raises(ValueError, match="stream_ids"):
        generate_ids(tiny_model, prompts, stream_ids=[0], **kw)


def test_pick_draws_from_the_nucleus_in_proportion():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 40000
    logits = probs.log().repeat(n, 1)
    g = torch.Generator().manual_seed(0)

    def freq(temperature: float, top_p: float) -> torch.Tensor:
        noise = torch.rand((n, 4), generator=g, dtype=torch.float64)
        return torch.bincount(_pick(logits, noise, temperature, top_p), minlength=4).double() / n

    assert torch.allclose(freq(1.0, 1.0), probs.double(), atol=0.01)
    assert torch.allclose(freq(1.0, 0.7), torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64), atol=0.01)
    sharp = probs.double() ** 2 / (probs.double() ** 2).sum()  # temperature 0.5 squares the probabilities
    assert torch.allclose(freq(0.5, 1.0), sharp, atol=0.01)
    assert _pick(logits[:2], None, 1.0, 1.0).tolist() == [0, 0]


def test_suppressed_tokens_never_come_and_presence_penalty_changes_repeats(tiny_model, tokenizer):
    prompts = _prompts(tokenizer)[:2]
    ref = _hf_greedy(tiny_model, prompts, 10)
    banned = sorted({t for r in ref for t in r[:3]})
    got = generate_ids(tiny_model, prompts, max_new_tokens=10, suppress_ids=banned)
    assert all(not set(s.ids) & set(banned) for (s,) in got)
    repeats = [r for r in ref if len(set(r)) < len(r)]
    if repeats:  # a random model's greedy path repeats itself; a strong penalty breaks that
        pen = generate_ids(tiny_model, prompts, max_new_tokens=10, presence_penalty=100.0)
        assert all(len(set(s.ids)) == len(s.ids) for (s,) in pen)


def test_text_generate_cuts_at_stops_and_reads_like_before(tiny_model, tokenizer):
    prompts = [SYSTEM + q for q in QUESTIONS[:2]]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ref = _hf_greedy(tiny_model, ids, 10)
    texts = generate(tiny_model, tokenizer, prompts, max_new_tokens=10)
    assert texts == [tokenizer.decode(r, skip_special_tokens=True).strip() for r in ref]
    k = generate(tiny_model, tokenizer, [prompts[0]] * 3, max_new_tokens=6, temperature=1.0, seed=3)
    assert len(k) == 3 and len(set(k)) > 1  # repeated prompts (rejection sampling's K) are distinct samples


def test_healing_constrains_only_the_first_token_of_its_prompts(tiny_model, tokenizer):
    """``heal``: a healed prompt's first token comes from its allowed ids (sampled too), the rest decode
    freely, that token is not counted in ``max_new_tokens``, and an unhealed prompt is left alone."""
    prompts = _prompts(tokenizer)[:3]
    ref = _hf_greedy(tiny_model, prompts, 6)
    allowed = [sorted({ref[0][0], ref[1][0]} ^ {5, 7, 11}), None, [13]]
    for temperature in (0.0, 1.0):
        got = generate_ids(tiny_model, prompts, max_new_tokens=6, temperature=temperature, heal=allowed,
                           batch_size=3)
        (a,), (b,), (c,) = got
        assert a.ids[0] in allowed[0] and c.ids[0] == 13
        assert len(a.ids) == len(c.ids) == 7  # the healed token and 6 new ones
        if temperature == 0.0:
            assert b.ids == ref[1]  # the unhealed prompt decodes as without healing
            forced = generate_ids(tiny_model, [prompts[2] + [13]], max_new_tokens=6)[0][0]
            assert c.ids[1:] == forced.ids  # decoding on from the healed token = prefilling it


def test_a_token_budget_caps_a_batch_of_long_prompts_and_keeps_greedy_replies(tiny_model, tokenizer, monkeypatch):
    """``batch_tokens`` splits a batch where rows x (longest prompt + max_new_tokens) would pass it; the greedy
    replies stay transformers' own. The evaluations' ``generate`` decodes 32 rows under 32 x 512 tokens."""
    import herd.engine.generation as g

    prompts = _prompts(tokenizer)
    widths = sorted((len(p) + 12 for p in prompts), reverse=True)
    budget = 2 * widths[0] + 1  # two rows of the longest fit; three do not
    seen: list[int] = []
    decode = g._decode
    monkeypatch.setattr(g, "_decode", lambda model, ps, batch, **kw: seen.append(len(batch)) or decode(
        model, ps, batch, **kw))
    got = generate_ids(tiny_model, prompts, max_new_tokens=12, batch_size=4, batch_tokens=budget)
    assert seen == [2, 2]  # a budget of 4 rows would have run one batch
    for rows, start in zip(seen, (0, 2)):
        assert rows * widths[start] <= budget
    assert [s[0].ids for s in got] == _hf_greedy(tiny_model, prompts, 12)
    seen.clear()
    generate_ids(tiny_model, prompts, max_new_tokens=12, batch_size=4, batch_tokens=1)  # never below one row
    assert seen == [1, 1, 1, 1]
    seen.clear()
    generate(tiny_model, tokenizer, [tokenizer.decode(p) for p in prompts], max_new_tokens=4)
    assert seen == [4] and (g.EVAL_BATCH, g.EVAL_BATCH_TOKENS) == (32, 32 * 512)
