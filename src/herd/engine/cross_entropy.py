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


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         chunk: int = CHUNK) -> torch.Tensor:
    """``sum(cross_entropy(hidden @ weight.T, labels))`` over rows of ``hidden`` [n, d] (labelled positions
    only), in the autocast dtype when autocast is on (as ``nn.Linear`` would run), softmax in fp32."""
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk, dtype, torch.is_grad_enabled())
