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


def _row_use(items, cfg) -> float:
    """Useful share of the positions the loop computes over one epoch (padding included)."""
    from herd.engine.training import micro_batches, plan_steps

    used = computed = 0
    for step in plan_steps(len(items), cfg):
        mbs, n_trained = micro_batches([items[i] for i in step], cfg, 0, 0, 1)
        assert sum(b.n_trained for b in mbs) == n_trained  # every example once, every target kept
        used += sum(b.n_tokens for b in mbs)
        computed += sum(b.input_ids.numel() for b in mbs)
    return used / computed


def test_rows_are_at_least_97_percent_useful_on_alpaca_and_long_documents(tokenizer):
    """A step's examples pack only among themselves (the batch is the paper's), so fixed-width rows left
    the step's remainder as padding: 77 % useful at 16 records x 2,048. Rows are narrowed to the step."""
    import json

    from herd.data import load_examples
    from herd.data.tokenize import Tokenized
    from herd.engine.training import LoopConfig
    from tests.conftest import ALPACA_DEMO, SHARED

    alpaca = load_examples(ALPACA_DEMO, "alpaca")
    for row_len, per_step, rows in ((512, 128, 4), (2048, 16, 4), (2048, 160, 16)):
        items, _ = tokenize_examples(alpaca, get_template("alpaca"), tokenizer, row_len)
        cfg = LoopConfig(global_batch=per_step, epochs=1, row_len=row_len, micro_batch_rows=rows)
        assert _row_use(items, cfg) >= 0.97, (row_len, per_step)
    texts = [json.loads(line)["text"] for line in (SHARED / "llamafactory_pretrain_text_demo" / "c4_demo.jsonl")
             .read_text().splitlines()[:400]]
    docs = [Tokenized(ids, ids, "c4", i) for i, t in enumerate(texts)
            if 150 <= len(ids := tokenizer(t)["input_ids"]) <= 2048]
    assert len(docs) >= 100 and max(len(d) for d in docs) > 1000  # documents of 150 to 2,048 tokens
    assert _row_use(docs, LoopConfig(global_batch=16, epochs=1, row_len=2048, micro_batch_rows=4)) >= 0.97


def test_flat_micro_batches_give_the_rows_loss_and_keep_every_target(tiny_model, tokenizer, alpaca_examples):
    """On a GPU with flex/flash attention a micro-batch is one flat row ([1, L], L in steps of an eighth
    of a full micro-batch): the same records, targets and loss as the packed rows it replaces."""
    from herd.engine.training import LoopConfig, flat_quantum, micro_batches

    items, _ = tokenize_examples(alpaca_examples[:40], get_template("alpaca"), tokenizer, max_len=512)
    cfg = LoopConfig(global_batch=40, epochs=1, row_len=512, micro_batch_rows=4)
    q = flat_quantum(cfg)
    assert q == 256  # 4 x 512 / 8
    rows, n_rows = micro_batches(items, cfg, tokenizer.pad_token_id, 0, 1)
    flat, n_flat = micro_batches(items, cfg, tokenizer.pad_token_id, 0, 1, quantum=q)
    assert n_rows == n_flat and len(rows) == len(flat) >= 2
    for r, f in zip(rows, flat):
        assert f.input_ids.shape[0] == 1 and f.input_ids.shape[1] % q == 0
        assert f.input_ids.shape[1] - f.n_tokens < q  # only the rounding is padding
        assert f.n_trained == r.n_trained and f.n_tokens == r.n_tokens
        real = r.labels[r.labels != -100]
        assert torch.equal(f.labels[f.labels != -100].sort().values, real.sort().values)
        starts = (f.position_ids[0] == 0).nonzero().flatten().tolist()
        assert all(f.labels[0, s - 1] == -100 for s in starts[1:])  # no target crosses a record
        assert abs(_loss(tiny_model, f) - _loss(tiny_model, r)) < 1e-4
    shapes = {tuple(f.input_ids.shape) for f in flat}
    assert all(1 <= w // q <= 8 for _, w in shapes)
