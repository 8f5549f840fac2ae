"""Keys/values kept between forward passes: a cache that grows in place, and a prompt prefix computed
once and reused by every row of a batch (generation, multiple-choice scoring, guard scoring)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import numpy as np
import torch
from transformers import LlamaForCausalLM
from transformers.cache_utils import DynamicCache, DynamicLayer

# transformers renamed the forward's ``past_key_values`` to ``cache`` (5.2x); either works here
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
PREFIX_MIN = 16  # shorter shared prefixes are not worth a separate pass


class GrowingLayer(DynamicLayer):
    """A cache layer whose keys/values live in a buffer with spare room: a decode step writes one
    position in place instead of concatenating the whole cache."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._k = self._v = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self.length + new
        if self._k is None or end > self._k.shape[-2]:
            cap = max(end, 2 * (self._k.shape[-2] if self._k is not None else 0), 64)
            k = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
            if self.length:
                k[..., : self.length, :] = self._k[..., : self.length, :]
                v[..., : self.length, :] = self._v[..., : self.length, :]
            self._k, self._v = k, v
        self._k[..., self.length:end, :] = key_states
        self._v[..., self.length:end, :] = value_states
        self.length = end
        self.keys, self.values = self._k[..., :end, :], self._v[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]


def new_cache() -> DynamicCache:
    """An empty cache whose layers grow in place (:class:`GrowingLayer`)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    cache.layers = []
    return cache


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens ``a`` and ``b`` start with alike."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with."""
    if not seqs:
        return 0
    return min([len(seqs[0])] + [common_prefix(seqs[0], s) for s in seqs[1:]])


@torch.no_grad()
def prefix_cache(model, ids: Sequence[int]) -> DynamicCache:
    """Keys/values of ``ids`` (batch 1) from ``model`` (a causal LM or its decoder)."""
    cache = new_cache()
    dev = next(model.parameters()).device
    head = {"logits_to_keep": 1} if model.get_output_embeddings() is not None else {}  # an LM: no prefix logits
    model(input_ids=torch.tensor([list(ids)], device=dev), **{CACHE_KW: cache}, use_cache=True, **head)
    return cache


def repeated(cache: DynamicCache, n: int) -> DynamicCache:
    """A copy of a batch-1 ``cache`` for ``n`` rows (the original stays as it was, for the next batch)."""
    out = copy.deepcopy(cache)
    out.batch_select_indices(torch.zeros(n, dtype=torch.long, device=cache.layers[0].keys.device))
    return out


def after_prefix(rows: Sequence[Sequence[int]], shared: int, prefix: DynamicCache | None, pad: int,
                 device) -> dict:
    """Forward arguments for ``rows`` whose first ``shared`` tokens are ``prefix``'s: the rest right-padded,
    a mask over prefix and rest, positions after the prefix, and a copy of the prefix cache per row
    (``prefix`` None: the rows whole, no cache kept)."""
    width = max(len(r) for r in rows) - shared
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for k, r in enumerate(rows):
        ids[k, : len(r) - shared] = torch.tensor(list(r[shared:]))
        mask[k, shared: len(r)] = 1
    kw: dict = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": prefix is not None}
    if prefix is not None:
        kw[CACHE_KW] = repeated(prefix, len(rows))
        kw["position_ids"] = torch.arange(shared, shared + width, device=device)[None].expand(len(rows), -1)
    return kw
