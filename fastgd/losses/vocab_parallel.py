"""Vocabulary-parallel cross-entropy: logits that are a ``DTensor`` sharded over the classes
(``Shard`` of the class dimension on one dimension of its ``DeviceMesh``, as a ``ColwiseParallel``
LM head with ``use_local_output=False`` makes them).

Each rank reduces its own slice of every row with the same fused kernel, to the parts ``lse_r``,
``zt_r`` and ``wz_r`` of ``fastgd/kernels/cross_entropy.py``; they combine over the vocabulary's
process group with two all-reduces of N-vectors (never a gather of the ``N x V`` logits):

    M   = max_r lse_r                         all-reduce MAX of N values
    (S, z_t, sum_c w_c z_c) = sum_r (exp(lse_r - M), zt_r, wz_r)    all-reduce SUM of 3N values
    lse = M + log S

(the third part, for label smoothing, travels only when ``label_smoothing > 0``), then ``ce`` of
the whole row exactly as the single-device kernel writes it. Per rank and forward that is ``4N``
bytes (MAX) plus ``8N`` bytes (SUM; ``12N`` with smoothing) of float32 into the all-reduces,
against ``N x V x b`` for gathering the logits. The backward is local: each rank writes the
gradient of its own slice from the whole row's ``lse`` (no communication), a ``DTensor`` with the
logits' placements.

The layout is torch's, read from the DTensor; nothing here shards anything itself.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import backend, guard
from ..errors import InvalidValueError
from .cross_entropy_ops import (ClassSlice, RowOptions, check_target_range, rows_backward_into,
                                shard_rows_forward)
from .linear_cross_entropy_ops import backward_pass, shard_forward_pass


class VocabShard(NamedTuple):
    """One rank's share of vocabulary-parallel logits: which classes, and the process group
    that holds the others."""

    classes: ClassSlice
    group: object  # torch.distributed.ProcessGroup


def unwrap_classes(input: Tensor, class_dim: int,
                   what: str) -> tuple[Tensor, Optional[VocabShard]]:
    """``(local tensor, shard)`` of a DTensor sharded over its class dimension ``class_dim``
    (1 of ``(N, C)`` logits, 0 of a ``(V, H)`` LM head) on one mesh dimension and replicated on
    the others; ``shard`` is None for a plain tensor or a replicated DTensor (whose local tensor
    is the whole)."""
    if not guard.is_dtensor(input):
        return input, None
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    vocab_dims, others = [], []
    for mesh_dim, placement in enumerate(input.placements):
        if type(placement) is Shard and placement.dim % input.dim() == class_dim:
            vocab_dims.append(mesh_dim)
        elif not placement.is_replicate():
            others.append(placement)
    if others or len(vocab_dims) > 1:
        raise InvalidValueError(
            f"{what} is a DTensor with placements {input.placements}; fastgd's losses take "
            f"logits sharded over the classes (Shard({class_dim}) on one mesh dimension) and "
            f"replicated on the others -- redistribute them, e.g. "
            f"{what}.redistribute(mesh, [Shard({class_dim})]), or pass {what}.to_local()")
    local = input.to_local()  # differentiable: the gradient comes back with these placements
    if not vocab_dims:
        return local, None
    _, offsets = compute_local_shape_and_global_offset(input.shape, input.device_mesh,
                                                       input.placements)
    classes = ClassSlice(offset=offsets[class_dim], total=input.shape[class_dim])
    return local, VocabShard(classes, input.device_mesh.get_group(vocab_dims[0]))


def whole(t, what: str):
    """A DTensor argument that every rank needs whole (targets, class weights, ``num_items``)
    as a plain tensor; anything else as it is."""
    if not guard.is_dtensor(t):
        return t
    if all(placement.is_replicate() for placement in t.placements):
        return t.to_local()
    if any(placement.is_partial() for placement in t.placements):
        raise InvalidValueError(f"{what} is a DTensor with a Partial placement {t.placements}; "
                                f"reduce it first ({what}.full_tensor())")
    return t.full_tensor()  # a gather of N integers: small next to the logits


def whole_replicated(t, what: str):
    """A DTensor argument every rank needs whole and differentiable (the hidden states): its
    replicated local tensor, whose gradient flows back through the redistribution; a plain
    tensor as it is."""
    if not guard.is_dtensor(t):
        return t
    if any(placement.is_partial() for placement in t.placements):
        raise InvalidValueError(f"{what} is a DTensor with a Partial placement {t.placements}; "
                                f"reduce it first")
    from torch.distributed.tensor import Replicate

    return t.redistribute(t.device_mesh, [Replicate()] * t.device_mesh.ndim).to_local()


def rows(logits: Tensor, target: Tensor, weight: Optional[Tensor], options: RowOptions,
         shard: VocabShard) -> tuple[Tensor, Tensor]:
    """Per-row ``(ce, lse)`` of the whole rows, from this rank's ``(N, C_r)`` slice of them;
    the same on every rank of ``shard.group``. Differentiable in ``logits``."""
    return _VocabParallelRows.apply(logits, target, weight, options, shard)


def _combine(lse_r, target_z, weighted_z, target, weight, options: RowOptions,
             shard: VocabShard) -> tuple[Tensor, Tensor]:
    """The whole rows' ``(ce, lse)`` from every rank's parts (module docstring)."""
    dist = torch.distributed
    row_max = lse_r.clone()
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=shard.group)
    # a row of -inf only (a masked vocabulary): shift by 0, as the kernel, not by -inf
    shift = torch.where(row_max == float("-inf"), 0.0, row_max)
    # the smoothing term travels only when it is used: 2N values instead of 3N otherwise
    smoothing = options.label_smoothing > 0
    parts = (torch.exp(lse_r - shift), target_z) + ((weighted_z,) if smoothing else ())
    sums = torch.stack(parts)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=shard.group)
    lse = shift + torch.log(sums[0])
    total = shard.classes.total
    ignored = target == options.ignore_index
    in_range = (target >= 0) & (target < total)
    if weight is not None:
        w_t = weight[torch.where(in_range, target, 0).long()]
    else:
        w_t = torch.ones((), dtype=lse.dtype, device=lse.device)
    ce = (1.0 - options.label_smoothing) * w_t * (lse - sums[1])
    if smoothing:
        w_sum = weight.sum() if weight is not None else float(total)
        ce = ce + options.label_smoothing / total * (w_sum * lse - sums[2])
    ce = torch.where(ignored, 0.0, torch.where(in_range, ce, float("nan")))
    return ce, lse


class _VocabParallelRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, options: RowOptions, shard: VocabShard):
        if backend.can_check_on_host(target):
            check_target_range(target, shard.classes.total, options.ignore_index)
        parts = shard_rows_forward(logits, target, weight, options, shard.classes)
        ce, lse = _combine(*parts, target, weight, options, shard)
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.options, ctx.shard = options, shard
        # An unused output's gradient stays None (not zeros): the backward skips ignored rows.
        ctx.set_materialize_grads(False)
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        grad_ce = grad_ce.contiguous() if grad_ce is not None else torch.zeros_like(lse)
        grad_lse = grad_lse.contiguous() if grad_lse is not None else None
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        rows_backward_into(grad, logits, target, weight, lse, grad_ce, grad_lse, ctx.options,
                           ctx.shard.classes)
        return grad, None, None, None, None


def linear_rows(hidden: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                class_weight: Optional[Tensor], options: RowOptions, chunk_size: int,
                shard: VocabShard) -> tuple[Tensor, Tensor]:
    """Per-row ``(ce, lse)`` of the whole rows of ``hidden @ W.T + b``, from this rank's slice
    ``weight``/``bias`` of the LM head (chunked, the logits never whole); ``hidden`` is the same
    on every rank of ``shard.group``. Differentiable in all three; ``hidden``'s gradient is
    summed over the group (each slice contributes its share)."""
    return _VocabParallelLinearRows.apply(hidden, weight, bias, target, class_weight, options,
                                          chunk_size, shard)


class _VocabParallelLinearRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, options, chunk_size, shard):
        if backend.can_check_on_host(target):
            check_target_range(target, shard.classes.total, options.ignore_index)
        parts = shard_forward_pass(hidden, weight, bias, target, class_weight, options,
                                   chunk_size, shard.classes)
        ce, lse = _combine(*parts, target, class_weight, options, shard)
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, lse)
        ctx.options, ctx.chunk_size, ctx.shard = options, chunk_size, shard
        ctx.set_materialize_grads(False)
        return ce, lse

    @staticmethod
    def backward(ctx, grad_ce, grad_lse):
        hidden, weight, bias, target, class_weight, lse = ctx.saved_tensors
        grad_ce = grad_ce.contiguous() if grad_ce is not None else torch.zeros_like(lse)
        grad_lse = grad_lse.contiguous() if grad_lse is not None else None
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        d_hidden, d_weight, d_bias = backward_pass(
            hidden, weight, bias, target, class_weight, lse, grad_ce, grad_lse, ctx.options,
            ctx.chunk_size, need_hidden, need_weight, need_bias and bias is not None,
            ctx.shard.classes)
        if need_hidden:  # every slice of the vocabulary adds its share: one all-reduce of N x H
            torch.distributed.all_reduce(d_hidden, group=ctx.shard.group)
        return (d_hidden if need_hidden else None, d_weight if need_weight else None,
                d_bias if need_bias and bias is not None else None) + (None,) * 5
