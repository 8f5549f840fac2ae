"""Held-out response loss: mean cross-entropy over the tokens the recipe trains on, on records the
model never saw. Parent and derived are scored with the same template, rows and masks."""

from __future__ import annotations

import math

import torch

from herd.core.progress import Progress
from herd.data.packing import make_batch
from herd.data.tokenize import Tokenized
from herd.engine.training import MaskedLMLoss


def heldout_loss(model, items: list[Tokenized], pad_id: int, *, row_len: int, rows_per_batch: int = 8,
                 progress: bool = False, desc: str = "held-out loss") -> dict:
    """Token-weighted loss and perplexity over ``items`` (packed, contamination-free); ``progress``
    reports records scored under ``desc``."""
    model.eval()
    loss_fn = MaskedLMLoss(model)
    total, n = 0.0, 0
    step = rows_per_batch * 2
    with Progress(total=len(items), desc=desc, unit="record", enabled=progress) as bar:
        for i in range(0, len(items), step):
            batch = make_batch(items[i:i + step], row_len, pad_id, pack=True)
            with torch.no_grad():
                total += float(loss_fn(batch.input_ids, batch.position_ids, batch.labels))
            n += batch.n_trained
            bar.update(len(items[i:i + step]))
    loss = total / max(1, n)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": n, "records": len(items)}
