"""Held-out response loss: mean cross-entropy over the tokens the recipe trains on, on records the
model never saw. Parent and derived are scored with the same template, rows and masks."""

from __future__ import annotations

import math

import torch
from torch import nn

from herd.core.progress import Progress
from herd.data.packing import best_fit, make_batch
from herd.data.tokenize import Tokenized
from herd.engine.cross_entropy import CHUNK
from herd.engine.training import causal_lm
from herd.templates import IGNORE_INDEX


def heldout_loss(model, items: list[Tokenized], pad_id: int, *, row_len: int, rows_per_batch: int = 8,
                 progress: bool = False, desc: str = "held-out loss") -> dict:
    """Token-weighted loss and perplexity over ``items`` (packed, contamination-free); ``progress``
    reports records scored under ``desc``. ``per_record`` holds ``(loss sum, tokens)`` of every record,
    in a deterministic order (packing is a pure function of the items), so two models scored on the same
    items pair up record by record; ``order[k]`` is the index in ``items`` of ``per_record[k]``."""
    model.eval()
    lm = causal_lm(model)
    dev = next(model.parameters()).device  # rows go where the model is (a GPU's evals); sums stay on the CPU
    per_record: list[tuple[float, int]] = []
    step = _records_per_call(rows_per_batch)
    with Progress(total=len(items), desc=desc, unit="record", enabled=progress) as bar:
        for i in range(0, len(items), step):
            batch = make_batch(items[i:i + step], row_len, pad_id, pack=True)
            with torch.no_grad():
                hidden = lm.model(input_ids=batch.input_ids.to(dev), position_ids=batch.position_ids.to(dev),
                                  use_cache=False).last_hidden_state
                sel = batch.labels != IGNORE_INDEX
                h, y = hidden[sel.to(dev)], batch.labels[sel].to(dev)
                tok = torch.cat([nn.functional.cross_entropy(lm.lm_head(h[s:s + CHUNK]).float(), y[s:s + CHUNK],
                                                             reduction="none") for s in range(0, len(y), CHUNK)]).cpu() \
                    if len(y) else torch.zeros(0)
            # a record starts where its position resets to 0; padding has no labels, so it adds nothing
            segment = (torch.cumsum((batch.position_ids == 0).long(), dim=1) - 1)
            key = (torch.arange(sel.shape[0])[:, None] * sel.shape[1] + segment)[sel]
            uniq, inv = torch.unique(key, return_inverse=True)
            sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, tok.double())
            counts = torch.bincount(inv, minlength=len(uniq))
            per_record += list(zip(sums.tolist(), counts.tolist()))
            bar.update(len(items[i:i + step]))
    total, n = sum(x for x, _ in per_record), sum(c for _, c in per_record)
    loss = total / max(1, n)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": n, "records": len(items),
            "per_record": per_record, "order": packing_order(items, row_len, rows_per_batch)}


def packing_order(items: list[Tokenized], row_len: int, rows_per_batch: int = 8) -> list[int]:
    """The item index of each ``per_record`` entry of :func:`heldout_loss`: rows in order, and within a row
    its records as :func:`make_batch` placed them (a record starts where its position resets to 0)."""
    step = _records_per_call(rows_per_batch)
    lengths = [len(x) for x in items]
    return [i + j for i in range(0, len(items), step)
            for group in best_fit(lengths[i:i + step], row_len) for j in group]


def _records_per_call(rows_per_batch: int) -> int:
    """Records handed to one packed forward: twice the rows, so short records fill them."""
    return rows_per_batch * 2
