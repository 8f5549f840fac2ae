"""The LM head and its cross-entropy in chunks, gradients computed on the way (never all logits at once).

Why: SmolLM2's vocabulary is 49,152 wide. For a micro-batch of 4 packed rows (~1,600 labelled
positions) the plain path holds the bf16 logits, their fp32 copy, the log-softmax and its gradient at
once: ~1 GB of a training step's peak for one loss. Here the labelled hidden states go through the head
``chunk`` rows at a time; each chunk's softmax gradient ``p - onehot`` is turned into the hidden-state
and weight gradients at once (the loss is a scalar, so they are known in the forward) and the logits are
dropped. The backward only scales the saved gradients. The arithmetic is the plain path's (logits from
the head in the compute dtype, softmax in fp32), so losses and gradients agree with
``F.cross_entropy(lm_head(h).float(), y, reduction="sum")`` (tested). Same idea as Liger-Kernel's fused
linear cross-entropy, written for any device in plain torch ops.

Per-position log-probs (DPO, KL and reply scoring) take the same chunked forward; their gradient
weights are known only after it, so the backward recomputes a chunk's logits instead of keeping them.
"""

from __future__ import annotations

import torch

CHUNK = 256  # labelled positions per chunk: 256 x 49,152 fp32 logits = 50 MB at most


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                compute_dtype: torch.dtype, grads: bool) -> torch.Tensor:
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        want_h, want_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        acc = torch.promote_types(compute_dtype, torch.float32)  # fp32 softmax and sums (fp64 stays fp64)
        grad_w = torch.zeros_like(weight, dtype=acc) if want_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h = h_all[s:s + chunk]
            y = labels[s:s + chunk]
            logits = (h @ w.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if not (want_h or want_w):
                continue
            p = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
            p[torch.arange(y.shape[0], device=y.device), y] -= 1.0  # d loss / d logits
            g = p.to(compute_dtype)
            if want_h:
                grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
            if want_w:
                grad_w += (g.t() @ h).to(acc)
        empty = torch.empty(0)
        ctx.save_for_backward(grad_h if want_h else empty, grad_w if want_w else empty)
        ctx.want = (want_h, want_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.want[0] else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.want[1] else None
        return gh, gw, None, None, None, None


def _head_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would run the head in: autocast's when on, else the inputs' promotion."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         chunk: int = CHUNK) -> torch.Tensor:
    """``sum(cross_entropy(hidden @ weight.T, labels))`` over rows of ``hidden`` [n, d] (labelled positions
    only), in the autocast dtype when autocast is on (as ``nn.Linear`` would run), softmax in fp32."""
    dtype = _head_dtype(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk, dtype, torch.is_grad_enabled())


class _LinearLogProbs(torch.autograd.Function):
    """Per-position ``log p(label)`` through the LM head in chunks; the backward recomputes each chunk's
    logits (one more head matmul) instead of keeping them, since its per-position weights (a sequence
    loss's gradient, e.g. DPO's sigmoid) are known only after the forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                compute_dtype: torch.dtype) -> torch.Tensor:
        w = weight.to(compute_dtype)
        h_all = hidden.to(compute_dtype)
        acc = torch.promote_types(compute_dtype, torch.float32)
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse_all = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            logits = (h_all[s:s + chunk] @ w.t()).to(acc)
            lse_all[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk] = logits.gather(1, labels[s:s + chunk, None]).squeeze(1) - lse_all[s:s + chunk]
        ctx.save_for_backward(hidden, weight, labels, lse_all)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, labels, lse_all = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd, chunk = ctx.compute_dtype, ctx.chunk
        w = weight.to(cd)
        h_all = hidden.to(cd)
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=lse_all.dtype) if want_w else None
        for s in range(0, hidden.shape[0], chunk):
            h = h_all[s:s + chunk]
            y = labels[s:s + chunk]
            g_out = grad_out[s:s + chunk].to(lse_all.dtype)
            # d logp_y / d logits = onehot(y) - softmax: scaled by each position's incoming gradient
            p = torch.exp((h @ w.t()).to(lse_all.dtype).sub_(lse_all[s:s + chunk, None]))
            g = p.mul_(-g_out[:, None])
            g[torch.arange(y.shape[0], device=y.device), y] += g_out
            g = g.to(cd)
            if want_h:
                grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
            if want_w:
                grad_w += (g.t() @ h).to(lse_all.dtype)
        return grad_h, grad_w.to(weight.dtype) if want_w else None, None, None, None


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                    chunk: int = CHUNK) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T)[i, labels[i]]`` for every row of ``hidden`` [n, d] (labelled
    positions only), never holding more than ``chunk`` rows of logits; the head runs in the autocast
    dtype when autocast is on, the softmax in fp32, as :func:`linear_cross_entropy`."""
    dtype = _head_dtype(hidden, weight)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearLogProbs.apply(hidden, weight, labels, chunk, dtype)
