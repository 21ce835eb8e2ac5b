"""The chunked linear cross-entropy as torch library ops: per-row ``ce``/``lse`` of
``hidden @ weight.T (+ bias)`` without ever holding the ``N x V`` logits.

``fastgd::linear_cross_entropy_rows(hidden (N, H), weight (V, H), bias (V,)?, target (N,), ...)
-> (ce (N,), lse (N,))`` with an autograd formula that calls
``fastgd::linear_cross_entropy_rows_backward`` (-> d_hidden, d_weight, d_bias). Reductions,
validation and the public API live in :mod:`fastgd.losses.linear_cross_entropy`.

How a pass works (shared by every backend -- only the row kernels differ; the matmuls are torch's):
one ``(rows, V)`` buffer in the logits' dtype is reused for every chunk of ``rows`` tokens.

* forward, per chunk: ``logits = h_c @ W.T (+ b)`` (fp32 accumulate inside the matmul), then the
  cross-entropy row kernel writes the chunk's ``ce`` and ``lse``. Nothing else is kept.
* backward, per chunk: the logits are recomputed into the buffer, the row backward kernel turns
  them into ``d logits`` *in place*, and two matmuls consume them at once:
  ``d_hidden[c] = dlogits @ W`` and ``d_weight += dlogits.T @ h_c`` (``d_bias += sum_rows``),
  accumulated in one fp32 ``V x H`` buffer (fp64 for fp64) that is cast to ``weight``'s dtype once
  at the end. For 16-bit inputs the accumulation is a single mixed-precision GEMM into that buffer
  where torch offers one (CUDA); elsewhere the chunk is upcast first (a chunk-sized temporary).

Why recompute in the backward rather than compute the gradients in the forward
(N tokens, V classes, H hidden, b bytes per element) -- for this op, the kernels' and compiled
graphs'; eager on the PyTorch path, where the saved matmul weighs most, the forward-gradient
scheme runs instead when it applies (:mod:`fastgd.losses.linear_cross_entropy_eager`):

* FLOPs: recomputing costs one extra ``2*N*V*H`` matmul: ``8*N*V*H`` in all instead of ``6*N*V*H``
  (the forward-gradient scheme would be ~25% cheaper in FLOPs).
* Bytes: both schemes hold a ``V*H*4``-byte fp32 accumulator during the gradient pass; the
  forward-gradient scheme also keeps it, plus ``d_hidden`` (``N*H*b``), alive from the forward to
  the backward, and spends the gradient FLOPs even when no backward follows (evaluation with grad
  mode on).
* Semantics: the gradient is linear in the upstream gradient only row by row. ``d_weight =
  sum_i g_i * dlogits_i.T h_i`` cannot be rescaled after the fact when the upstream ``g`` is a
  vector -- ``reduction="none"`` or a gradient through the returned ``lse`` -- so the
  forward-gradient scheme would need this recompute path anyway for those. Recomputing serves
  every option through the same code as :func:`fastgd.cross_entropy`: the loss is assembled from
  ``(ce, lse)`` by the same torch ops, so its gradient reaches this op as ``(grad_ce, grad_lse)``
  exactly as it reaches ``fastgd::cross_entropy_rows``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import backend
from .cross_entropy_ops import (ClassSlice, RowOptions, check_target_range, rows_backward_into,
                                rows_forward, shard_rows_forward)
from ..dtypes import compute_dtype
from .transforms import refuse_second_derivative
from ..launch_config import linear_cross_entropy_chunk

# Chunk-sized fp32 temporaries made by the PyTorch row path (cross_entropy_torch): the forward's
# exponentials; the backward works in the chunk's buffer for fp32 logits without a soft cap, and
# otherwise makes the upcast logits and the gradient. 3 covers the latter.
_TORCH_PATH_FP32_COPIES = 3


# --------------------------------------------------------------------------- chunking
def _bytes_per_logit(dtype: torch.dtype, uses_kernels: bool, mixed_gemm: bool) -> int:
    """Bytes of chunk working set per logit: the buffer itself, plus the temporaries the path
    makes (an fp32 upcast of the gradient for the d_weight accumulate without a mixed GEMM; the
    PyTorch row path's float32 copies)."""
    size, compute = dtype.itemsize, compute_dtype(dtype).itemsize
    extra = 0 if (size == compute or mixed_gemm) else compute
    if not uses_kernels:
        extra += _TORCH_PATH_FP32_COPIES * compute
    return size + extra


class ChunkPlan(NamedTuple):
    """How a pass walks its rows. The forward and the backward each make it with
    :func:`plan_chunks` from the same inputs, so they get the same plan."""
    rows: int  # token rows per chunk
    mixed_gemm: bool  # 16-bit chunks accumulate into the fp32 d_weight in one GEMM (no upcast)


def plan_chunks(hidden: Tensor, weight: Tensor, chunk_size: int) -> ChunkPlan:
    """Rows per chunk -- ``chunk_size`` if > 0, else the budget rule of launch_config -- and
    whether the backward's d_weight accumulate uses the mixed GEMM (which sizes the budget)."""
    n_rows = hidden.shape[0]
    mixed_gemm = uses_mixed_gemm(hidden)
    if chunk_size > 0:
        return ChunkPlan(max(1, min(chunk_size, n_rows)), mixed_gemm)
    kernels = backend.uses_kernels(hidden)
    per_logit = _bytes_per_logit(hidden.dtype, kernels, mixed_gemm)
    return ChunkPlan(linear_cross_entropy_chunk(n_rows, weight.shape[0], per_logit,
                                                torch_path=not kernels), mixed_gemm)


def _chunks(n_rows: int, rows: int):
    for start in range(0, n_rows, rows):
        yield start, min(start + rows, n_rows)


def _logits_into(out: Tensor, h_chunk: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if bias is not None:
        return torch.addmm(bias, h_chunk, weight.t(), out=out)
    return torch.mm(h_chunk, weight.t(), out=out)


# --------------------------------------------------------------------------- fp32 accumulate
@functools.lru_cache(maxsize=None)
def mixed_gemm_supported(device_type: str) -> bool:
    """Whether torch has, for ``device_type``, the GEMM that reads 16-bit operands and
    accumulates into an fp32 output (``aten::addmm.dtype_out``, torch >= 2.8; CUDA only so far).

    Decided once per device type from the dispatcher's registrations -- never by catching a
    failed call -- so the forward and the backward size their chunks from the same answer. (The
    torch version is fixed for the process, so the device type is the whole cache key.)"""
    dispatch_key = {"cuda": "CUDA", "cpu": "CPU"}.get(device_type)
    has_kernel = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    if (dispatch_key is None or has_kernel is None
            or "dtype_out" not in torch.ops.aten.addmm.overloads()):
        return False
    return bool(has_kernel("aten::addmm.dtype_out", dispatch_key))


def uses_mixed_gemm(like: Tensor) -> bool:
    """Whether the passes over ``like`` (the hidden states) use the mixed GEMM: on the compiled
    backend, where torch has one for the device. Read only by :func:`plan_chunks`."""
    return backend.backend_for(like) == "triton" and mixed_gemm_supported(like.device.type)


def _accumulate_product(acc: Tensor, a: Tensor, b: Tensor, mixed_gemm: bool) -> None:
    """``acc += a @ b`` with ``acc`` in the compute dtype, ``a`` and ``b`` in the logits' dtype;
    never a second accumulator-sized temporary with ``mixed_gemm`` (else the chunk is upcast
    first: a chunk-sized temporary, counted by :func:`_bytes_per_logit`)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif mixed_gemm:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


# --------------------------------------------------------------------------- passes
def _forward_pass(hidden, weight, bias, target, class_weight, options, chunk_size):
    n_rows, n_classes = hidden.shape[0], weight.shape[0]
    ce = torch.empty(n_rows, dtype=compute_dtype(hidden.dtype), device=hidden.device)
    lse = torch.empty_like(ce)
    if n_rows == 0:
        return ce, lse
    rows = plan_chunks(hidden, weight, chunk_size).rows
    buffer = torch.empty(rows, n_classes, dtype=hidden.dtype, device=hidden.device)
    for start, stop in _chunks(n_rows, rows):
        logits = _logits_into(buffer[: stop - start], hidden[start:stop], weight, bias)
        ce[start:stop], lse[start:stop] = rows_forward(logits, target[start:stop], class_weight,
                                                       options)
    return ce, lse


def shard_forward_pass(hidden, weight, bias, target, class_weight, options, chunk_size,
                       classes: ClassSlice) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's parts ``(lse_r, zt_r, wz_r)`` of a vocabulary-parallel row (see
    ``fastgd/kernels/cross_entropy.py``), ``weight`` and ``bias`` being the rank's slice
    ``classes`` of the LM head: the same chunks as :func:`_forward_pass`."""
    n_rows = hidden.shape[0]
    parts = tuple(torch.empty(n_rows, dtype=compute_dtype(hidden.dtype), device=hidden.device)
                  for _ in range(3))
    if n_rows == 0:
        return parts
    rows = plan_chunks(hidden, weight, chunk_size).rows
    buffer = torch.empty(rows, weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    for start, stop in _chunks(n_rows, rows):
        logits = _logits_into(buffer[: stop - start], hidden[start:stop], weight, bias)
        chunk_parts = shard_rows_forward(logits, target[start:stop], class_weight, options,
                                         classes)
        for whole, part in zip(parts, chunk_parts):
            whole[start:stop] = part
    return parts


def backward_pass(hidden, weight, bias, target, class_weight, lse, grad_ce, grad_lse, options,
                  chunk_size, need_hidden, need_weight, need_bias,
                  classes: Optional[ClassSlice] = None):
    """``(d_hidden, d_weight, d_bias)``, each an empty tensor where not needed; for a slice
    ``classes`` of the vocabulary (``weight`` and ``bias`` the slice's), ``lse`` is the whole
    rows' and ``d_hidden`` this slice's share of the gradient (to be summed over the slices)."""
    n_rows, n_classes = hidden.shape[0], weight.shape[0]
    compute = compute_dtype(hidden.dtype)
    device = hidden.device
    # every row of d_hidden is written by its chunk's matmul; the accumulators start at zero
    d_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if need_hidden else None
    d_weight = torch.zeros(weight.shape, dtype=compute, device=device) if need_weight else None
    d_bias = torch.zeros(n_classes, dtype=compute, device=device) if need_bias else None
    plan = plan_chunks(hidden, weight, chunk_size)
    buffer = torch.empty(min(plan.rows, n_rows), n_classes, dtype=hidden.dtype, device=device)
    for start, stop in _chunks(n_rows, plan.rows):
        h_chunk = hidden[start:stop]
        grad = _logits_into(buffer[: stop - start], h_chunk, weight, bias)
        rows_backward_into(  # in place: the chunk's logits become their gradient
            grad, grad, target[start:stop], class_weight, lse[start:stop], grad_ce[start:stop],
            grad_lse[start:stop] if grad_lse is not None else None, options, classes)
        if need_hidden:
            torch.mm(grad, weight, out=d_hidden[start:stop])
        if need_weight:
            _accumulate_product(d_weight, grad.t(), h_chunk, plan.mixed_gemm)
        if need_bias:
            d_bias += grad.sum(0, dtype=compute)
    return (
        d_hidden if need_hidden else hidden.new_empty(0),  # custom ops may not return aliases:
        d_weight.to(weight.dtype) if need_weight else hidden.new_empty(0),  # one empty each
        d_bias.to(bias.dtype) if need_bias else hidden.new_empty(0),
    )


# --------------------------------------------------------------------------- library ops
@torch.library.custom_op("fastgd::linear_cross_entropy_rows", mutates_args=())
def linear_cross_entropy_rows(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    class_weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    logit_scale: float,
    softcap: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(ce, lse)`` of the logits ``hidden @ weight.T + bias``, chunk by chunk.
    ``softcap <= 0``: no soft cap; ``chunk_size <= 0``: rows from the memory budget."""
    if backend.can_check_on_host(target):  # inside the op: eager, and opaque to torch.compile
        check_target_range(target, weight.shape[0], ignore_index)
    options = RowOptions(ignore_index, label_smoothing, logit_scale, softcap)
    return _forward_pass(hidden, weight, bias, target, class_weight, options, chunk_size)


@linear_cross_entropy_rows.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, label_smoothing, logit_scale,
      softcap, chunk_size):
    ce = hidden.new_empty(hidden.shape[0], dtype=compute_dtype(hidden.dtype))
    return ce, torch.empty_like(ce)


@torch.library.custom_op("fastgd::linear_cross_entropy_rows_backward", mutates_args=())
def linear_cross_entropy_rows_backward(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    target: Tensor,
    class_weight: Optional[Tensor],
    lse: Tensor,
    grad_ce: Tensor,
    grad_lse: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    logit_scale: float,
    softcap: float,
    chunk_size: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(d_hidden, d_weight, d_bias)``; each is an empty tensor when not asked for."""
    options = RowOptions(ignore_index, label_smoothing, logit_scale, softcap)
    return backward_pass(hidden, weight, bias, target, class_weight, lse, grad_ce, grad_lse,
                          options, chunk_size, need_hidden, need_weight, need_bias and
                          bias is not None)


@linear_cross_entropy_rows_backward.register_fake
def _(hidden, weight, bias, target, class_weight, lse, grad_ce, grad_lse, ignore_index,
      label_smoothing, logit_scale, softcap, chunk_size, need_hidden, need_weight, need_bias):
    return (
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else hidden.new_empty(0),
        torch.empty_like(bias) if need_bias and bias is not None else hidden.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, target, class_weight, *options, chunk_size = inputs
    ctx.save_for_backward(hidden, weight, bias, target, class_weight, output[1])
    ctx.options = RowOptions(*options)
    ctx.chunk_size = chunk_size
    ctx.n_inputs = len(inputs)
    ctx.set_materialize_grads(False)  # an unused lse keeps a None gradient: no lse term at all


def _backward(ctx, grad_ce, grad_lse):
    hidden, weight, bias, target, class_weight, lse = ctx.saved_tensors
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    differentiable = 3  # hidden, weight, bias; the rest are targets and options
    if not (need_hidden or need_weight or need_bias):
        return (None,) * ctx.n_inputs
    if grad_ce is None:
        grad_ce = torch.zeros_like(lse)
    grad_ce = grad_ce.contiguous()  # a grad from .sum().backward() has stride 0
    grad_lse = grad_lse.contiguous() if grad_lse is not None else None
    d_hidden, d_weight, d_bias = linear_cross_entropy_rows_backward(
        hidden, weight, bias, target, class_weight, lse, grad_ce, grad_lse, *ctx.options,
        ctx.chunk_size, need_hidden, need_weight, need_bias)
    return (d_hidden if need_hidden else None, d_weight if need_weight else None,
            d_bias if need_bias else None) + (None,) * (ctx.n_inputs - differentiable)


linear_cross_entropy_rows.register_autograd(_backward, setup_context=_setup_context)
refuse_second_derivative(linear_cross_entropy_rows_backward, "fastgd.linear_cross_entropy")
