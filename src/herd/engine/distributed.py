"""Work shared between torchrun ranks outside the training loop: sampling, scoring, evaluation.

The alignment stages spend as much time generating and scoring as training. Under torchrun each rank
takes every ``world``-th CHUNK of the work (chunks as the single-process code cuts them: the same batch
composition and the same per-chunk seeds), and every rank gets the whole result back in input order. So
a 2-process run samples exactly the replies a 1-process run samples, and the data and statistics every
rank computes from them are the same on all ranks. With one process these are plain loops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from herd.engine.training import dist_env

T = TypeVar("T")
R = TypeVar("R")
_local = False


@contextmanager
def single_rank():
    """Within it, these helpers work alone on the calling rank (rank 0's scorecard, after the stages)."""
    global _local
    old, _local = _local, True
    try:
        yield
    finally:
        _local = old


def _env() -> tuple[int, int]:
    return (0, 1) if _local else dist_env()


def barrier() -> None:
    """Wait for every rank (a no-op in one process): e.g. before reading what rank 0 just published."""
    _, world = _env()
    if world > 1:
        dist.barrier()


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (the values themselves in one process)."""
    _, world = _env()
    if world == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def map_chunks(fn: Callable[[list[T], int], list[R]], items: Sequence[T], chunk: int) -> list[R]:
    """``fn(items[c*chunk:(c+1)*chunk], c)`` for every chunk ``c``, concatenated in order. Under torchrun
    rank r computes chunks r, r + world, ...; every rank returns the whole list."""
    rank, world = _env()
    chunks = [list(items[i:i + chunk]) for i in range(0, len(items), chunk)]
    mine = {c: fn(chunks[c], c) for c in range(rank, len(chunks), world)}
    if world > 1:
        parts: list[dict[int, list[R]] | None] = [None] * world
        dist.all_gather_object(parts, mine)
        mine = {c: v for p in parts for c, v in (p or {}).items()}
    return [x for c in range(len(chunks)) for x in mine[c]]


def map_rows(fn: Callable[[list[T]], torch.Tensor], items: Sequence[T], chunk: int,
             key: Callable[[T], int] | None = None) -> torch.Tensor:
    """Like :func:`map_chunks` for a function that returns one tensor row per item: ``fn(chunk)`` is a
    tensor ``[len(chunk), ...]``; the result is a CPU tensor of all rows in input order. With ``key``
    the items are chunked in ``key`` order (length-sorted batches waste little padding). Rows narrower
    than others along dim 1 are zero-padded to the widest."""
    order = sorted(range(len(items)), key=lambda i: key(items[i])) if key else list(range(len(items)))
    rows = map_chunks(lambda part, _c: list(fn(part).detach().cpu().unbind(0)), [items[i] for i in order], chunk)
    if not rows:
        return torch.zeros(0)
    if rows[0].dim() == 0:
        out = torch.zeros(len(rows), dtype=rows[0].dtype)
    else:
        width = max(r.shape[0] for r in rows)
        out = torch.zeros((len(rows), width, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for pos, i in enumerate(order):
        r = rows[pos]
        if r.dim() == 0:
            out[i] = r
        else:
            out[i, : r.shape[0]] = r
    return out
