"""The PyTorch path's linear cross-entropy when gradients will be wanted: the gradients computed
in the forward pass, as torch 2.13's chunked ``F.linear_cross_entropy`` does, so the backward
is a scaling instead of a second pass over the logits (3 matmuls of ``2*N*V*H`` FLOPs instead of
4). Eager only -- a CPU without the interpreter, float32/float64 inputs, outside
``torch.compile`` -- where it is the faster scheme; the kernels and compiled graphs keep the
recomputing library op of :mod:`fastgd.losses.linear_cross_entropy_ops`.

Why it is exact: per row ``i`` the op returns ``ce_i`` and ``lse_i``; the loss built on them
sends back ``grad_ce`` and ``grad_lse``. The forward computes the *unit* gradients, those for
``grad_ce = 1`` on every row and no ``grad_lse``:

    U_h[i]   = dlogits_i @ W            U_W = sum_i dlogits_i.T h_i       U_b = sum_i dlogits_i

(``dlogits_i`` the row's ``d ce_i / d logits_i``; zero on ignored rows). When the backward gets
``grad_lse`` unused and ``grad_ce`` the same value ``c`` on every row -- the ``mean`` and ``sum``
reductions without z-loss, ``num_items`` included -- the gradients are ``c * U``, by linearity.
Anything else (``reduction="none"``, ``return_lse``, z-loss, a second backward) falls back to the
recomputing backward pass on the saved inputs, so every case stays correct. Reading ``grad_ce``
to compare it is a host read of a CPU tensor: no device sync.

Memory: the unit gradients (``N x H`` and ``V x H``, the size of the gradients themselves) live
from the forward to the backward, which scales them in place and hands them over.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backend
from .cross_entropy_ops import RowOptions, check_target_range, rows_backward_into, rows_forward
from .linear_cross_entropy_ops import _chunks, _logits_into, backward_pass, plan_chunks


def takes(hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether this scheme serves the call: the PyTorch path on a CPU (the backward reads the
    upstream gradient on the host: free there, a sync for a GPU tensor forced onto this path),
    eager, gradients wanted, inputs in their compute dtype (16-bit unit gradients would be
    rounded twice)."""
    return (not backend.uses_kernels(hidden) and backend.can_check_on_host(hidden)
            and not torch.compiler.is_compiling()
            and torch.is_grad_enabled()
            and hidden.dtype in (torch.float32, torch.float64)
            and any(t is not None and t.requires_grad for t in (hidden, weight, bias)))


def rows(hidden, weight, bias, target, class_weight, options: RowOptions,
         chunk_size: int) -> tuple[Tensor, Tensor]:
    return _GradientInForward.apply(hidden, weight, bias, target, class_weight, options,
                                    chunk_size)


class _GradientInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, options, chunk_size):
        if backend.can_check_on_host(target):
            check_target_range(target, weight.shape[0], options.ignore_index)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and bias is not None
        n_rows, n_classes = hidden.shape[0], weight.shape[0]
        ce = hidden.new_empty(n_rows)
        lse = torch.empty_like(ce)
        unit_h = torch.empty_like(hidden) if need_hidden else None
        unit_w = torch.zeros_like(weight) if need_weight else None
        unit_b = torch.zeros_like(bias) if need_bias else None
        rows_per_chunk = plan_chunks(hidden, weight, chunk_size).rows
        buffer = hidden.new_empty(min(rows_per_chunk, n_rows), n_classes)
        for start, stop in _chunks(n_rows, rows_per_chunk):
            h_chunk, t_chunk = hidden[start:stop], target[start:stop]
            logits = _logits_into(buffer[: stop - start], h_chunk, weight, bias)
            ce[start:stop], lse[start:stop] = rows_forward(logits, t_chunk, class_weight, options)
            ones = ce.new_ones(stop - start)
            rows_backward_into(logits, logits, t_chunk, class_weight, lse[start:stop], ones,
                               None, options)  # in place: the chunk's unit gradient
            if need_hidden:
                torch.mm(logits, weight, out=unit_h[start:stop])
            if need_weight:
                unit_w.addmm_(logits.t(), h_chunk)
            if need_bias:
                unit_b += logits.sum(0)
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, lse)
        ctx.units = [unit_h, unit_w, unit_b]
        ctx.options, ctx.chunk_size = options, chunk_size
        ctx.set_materialize_grads(False)
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):
        hidden, weight, bias, target, class_weight, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_bias = need_bias and bias is not None
        scale = _uniform_value(grad_ce) if grad_lse is None else None
        if scale is not None and ctx.units is not None:
            units, ctx.units = ctx.units, None  # handed over: a second backward recomputes
            grads = [u.mul_(scale) if u is not None and scale != 1.0 else u for u in units]
        else:
            if grad_ce is None:
                grad_ce = torch.zeros_like(lse)
            grads = backward_pass(
                hidden, weight, bias, target, class_weight, lse, grad_ce.contiguous(),
                grad_lse.contiguous() if grad_lse is not None else None, ctx.options,
                ctx.chunk_size, need_hidden, need_weight, need_bias)
        d_hidden, d_weight, d_bias = grads
        return (d_hidden if need_hidden else None, d_weight if need_weight else None,
                d_bias if need_bias else None, None, None, None, None)


def _uniform_value(grad_ce: Optional[Tensor]) -> Optional[float]:
    """The one value every row's upstream gradient has (the host reads a CPU tensor), or None."""
    if grad_ce is None or grad_ce.numel() == 0:
        return None
    first = grad_ce.reshape(-1)[0]
    if not bool(torch.isfinite(first)) or not bool((grad_ce == first).all()):
        return None
    return float(first)
