"""Packing is tested, not trusted: packed rows must give the unpacked loss and never leak attention."""

from __future__ import annotations

import torch

from herd.data.packing import best_fit, make_batch
from herd.data.tokenize import tokenize_examples
from herd.engine.training import MaskedLMLoss
from herd.templates import get_template


def _loss(model, batch):
    with torch.no_grad():
        return float(MaskedLMLoss(model)(batch.input_ids, batch.position_ids, batch.labels)) / batch.n_trained


def test_packed_loss_equals_unpacked(tiny_model, tokenizer, alpaca_examples):
    items, _ = tokenize_examples(alpaca_examples[:24], get_template("alpaca"), tokenizer, max_len=512)
    packed = make_batch(items, 512, tokenizer.pad_token_id, pack=True)
    unpacked = make_batch(items, 512, tokenizer.pad_token_id, pack=False)
    assert packed.input_ids.shape[0] < unpacked.input_ids.shape[0]  # it really packed
    assert packed.n_trained == unpacked.n_trained
    assert abs(_loss(tiny_model, packed) - _loss(tiny_model, unpacked)) < 1e-4


def test_packed_record_logits_match_record_alone(tiny_model, tokenizer, alpaca_examples):
    """The second record of a row sees nothing of the first (the use_cache=False condition)."""
    items, _ = tokenize_examples(alpaca_examples[:2], get_template("alpaca"), tokenizer, max_len=512)
    a, b = items
    ids = torch.tensor([a.input_ids.tolist() + b.input_ids.tolist()])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    lm = tiny_model.eval()
    with torch.no_grad():
        packed = lm.model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[0, len(a):]
        alone = lm.model(input_ids=torch.tensor([b.input_ids.tolist()]), use_cache=False).last_hidden_state[0]
    assert torch.allclose(packed, alone, atol=1e-5)


def test_labels_never_cross_records(tokenizer, alpaca_examples):
    items, _ = tokenize_examples(alpaca_examples[:6], get_template("alpaca"), tokenizer, max_len=512)
    batch = make_batch(items, 512, tokenizer.pad_token_id, pack=True)
    for r in range(batch.input_ids.shape[0]):
        starts = (batch.position_ids[r] == 0).nonzero().flatten().tolist()
        for s in starts[1:]:
            assert batch.labels[r, s - 1] == -100  # last token of a record predicts nothing


def test_best_fit_fills_rows():
    rows = best_fit([300, 200, 250, 100, 60, 500, 12], 512)
    assert sorted(i for r in rows for i in r) == list(range(7))
    lengths = [300, 200, 250, 100, 60, 500, 12]
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert len(rows) == 3
