"""Reply log-probs: only the final reply is counted, and batching with padding changes nothing."""

from __future__ import annotations

import pytest
import torch

from herd.engine.logprobs import (
    batched_logps,
    encode_reply,
    last_run_only,
    pad_right,
    reply_logps,
    sequence_logps,
)
from herd.templates import IGNORE_INDEX, get_template

torch.set_num_threads(1)

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Count to three, please, and explain why you stopped there."}],
]
REPLIES = ["Paris.", "Blue", "One, two, three. I stopped because you asked for three."]


def test_last_run_only():
    X = IGNORE_INDEX
    assert last_run_only([X, 5, 6, X, X, 7, 8, X]) == [X, X, X, X, X, 7, 8, X]
    assert last_run_only([X, X]) == [X, X]


@pytest.mark.parametrize("template_name", ["llama2_chat", "chatml", "vicuna_v1.1"])
def test_only_the_final_reply_is_labelled(tokenizer, template_name):
    template = get_template(template_name)
    enc = encode_reply(template, tokenizer, PROMPTS[1], REPLIES[1])
    full = template.render([*PROMPTS[1], {"role": "assistant", "content": REPLIES[1]}], tokenizer)
    assert enc.input_ids == full.input_ids
    labelled = [t for t in enc.labels if t != IGNORE_INDEX]
    assert 0 < len(labelled) < full.n_trained  # the earlier assistant turn is context, not scored
    assert REPLIES[1] in tokenizer.decode(labelled) and "Hello" not in tokenizer.decode(labelled)
    # the scored tokens are the tail of the rendered ids: what the model emits after the prompt
    first = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert enc.labels[first:first + len(labelled)] == labelled


def test_sequence_logps_equals_full_logits(tiny_model, tokenizer):
    template = get_template("llama2_chat")
    enc = encode_reply(template, tokenizer, PROMPTS[0], REPLIES[0])
    ids, att, lab = pad_right([enc], tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logps(tiny_model, ids, att, lab)
        logits = tiny_model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    want = sum(float(logp[t - 1, enc.input_ids[t]]) for t in range(1, len(enc)) if enc.labels[t] != IGNORE_INDEX)
    assert float(got[0]) == pytest.approx(want, abs=1e-4)


def test_batched_equals_one_by_one(tiny_model, tokenizer):
    template = get_template("llama2_chat")
    batched = reply_logps(tiny_model, tokenizer, template, PROMPTS, REPLIES, batch_size=3)
    single = torch.stack([reply_logps(tiny_model, tokenizer, template, [p], [r], batch_size=1)[0]
                          for p, r in zip(PROMPTS, REPLIES)])
    assert torch.allclose(batched, single, atol=1e-4), (batched, single)
    seqs = [encode_reply(template, tokenizer, p, r) for p, r in zip(PROMPTS, REPLIES)]
    assert torch.allclose(batched_logps(tiny_model, seqs, tokenizer.pad_token_id, batch_size=2), single, atol=1e-4)
    assert (batched < 0).all()


def test_gradient_flows_to_policy(tiny_model, tokenizer):
    enc = [encode_reply(get_template("chatml"), tokenizer, p, r) for p, r in zip(PROMPTS, REPLIES)]
    ids, att, lab = pad_right(enc, tokenizer.pad_token_id)
    sequence_logps(tiny_model, ids, att, lab).sum().backward()
    assert tiny_model.model.embed_tokens.weight.grad is not None
