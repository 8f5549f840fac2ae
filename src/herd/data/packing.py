"""Packing variable-length records into fixed rows WITHOUT cross-contamination.

Each record keeps its own positions (``position_ids`` restart at 0 per record). transformers builds a
per-record block-causal mask from restarting positions when ``attention_mask`` is None and no KV cache
is created (``use_cache=False``), so records in one row never attend to each other; a test proves the
packed loss equals the unpacked loss. Rows are filled best-fit-decreasing, which wastes less of each
row than greedy first-fit in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from herd.data.tokenize import Tokenized
from herd.templates import IGNORE_INDEX


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, row_len]
    labels: torch.Tensor  # [rows, row_len], already aligned: labels[t] is the target of position t-1
    position_ids: torch.Tensor
    row_tokens: torch.Tensor  # [rows] real (non-pad) tokens per row
    n_trained: int  # tokens that contribute to the loss

    @property
    def n_tokens(self) -> int:
        return int(self.row_tokens.sum())


def best_fit(lengths: list[int], row_len: int) -> list[list[int]]:
    """Assign item indices to rows of capacity ``row_len`` (best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = lengths[i]
        if n > row_len:
            raise ValueError(f"record of {n} tokens does not fit a row of {row_len}")
        best, best_left = -1, row_len + 1
        for r, left in enumerate(space):
            if n <= left < best_left:
                best, best_left = r, left
        if best < 0:
            rows.append([i])
            space.append(row_len - n)
        else:
            rows[best].append(i)
            space[best] -= n
    for r in rows:
        r.sort()
    return rows


def make_batch(items: list[Tokenized], row_len: int, pad_id: int, *, pack: bool = True) -> Batch:
    """Rows for one micro-batch. ``pack=False`` gives one record per row, padded (the reference path)."""
    lengths = [len(x) for x in items]
    groups = best_fit(lengths, row_len) if pack else [[i] for i in range(len(items))]
    width = row_len if pack else max(lengths)
    ids = np.full((len(groups), width), pad_id, dtype=np.int64)
    labels = np.full((len(groups), width), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((len(groups), width), dtype=np.int64)
    row_tokens = np.zeros(len(groups), dtype=np.int64)
    arange = np.arange(width, dtype=np.int64)
    for r, group in enumerate(groups):
        col = 0
        for i in group:
            x, n = items[i], lengths[i]
            ids[r, col:col + n] = x.input_ids
            # shift: the label at position t is the token at t+1 of the SAME record; a record's last
            # position keeps IGNORE_INDEX, so its first token is never a target of the previous record.
            labels[r, col:col + n - 1] = x.labels[1:]
            pos[r, col:col + n] = arange[:n]
            col += n
        row_tokens[r] = col
        if col < width:  # padding is its own "record" so it never joins a real one's attention block
            pos[r, col:] = arange[:width - col]
    n_tr = int(np.count_nonzero(labels != IGNORE_INDEX))
    return Batch(torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(pos),
                 torch.from_numpy(row_tokens), n_tr)
