"""``fastgd.cross_entropy`` and ``fastgd.CrossEntropyLoss``: a drop-in for
``torch.nn.functional.cross_entropy`` with class-index targets, plus z-loss, soft capping, logit
scaling, a gradient-accumulation normaliser and an opt-in in-place backward.

The loss of a batch is assembled from the per-row ``ce`` and ``lse`` of
:func:`fastgd.losses.cross_entropy_ops.cross_entropy_rows` with plain torch ops on ``N``-vectors (no
host sync), so autograd and ``torch.compile`` see ordinary code around one custom op:

* ``none``: ``ce_i + z_loss * lse_i**2`` (0 on ignored rows)
* ``sum``:  ``sum_i ce_i + z_loss * sum_i lse_i**2``, over counted rows
* ``mean``: ``sum_i ce_i / sum_i w[t_i]  +  z_loss * sum_i lse_i**2 / n_counted`` -- torch's
  weighted mean for the cross-entropy term, a plain mean over counted rows for the z-loss term.
  If no row is counted the loss is 0 (torch returns NaN) and the gradient is 0.
* ``num_items`` given (with ``mean`` or ``sum``): ``(sum_i ce_i + z_loss * sum_i lse_i**2) /
  num_items``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .. import guard
from . import legacy, vocab_parallel
from .cross_entropy_ops import cross_entropy_rows
from .transforms import refuse_gradient_transforms
from ..errors import InvalidTypeError, InvalidValueError, UnsupportedDtypeError
from .checks import as_float_option, check_class_weight, check_options, checked_options

# The kernels' tile loop counts classes in int32: leave room for the last tile's start.
MAX_CLASSES = 2**31 - 2**16


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
    num_items: Union[int, Tensor, None] = None,
    return_lse: bool = False,
    inplace_backward: bool = False,
):
    """Cross-entropy between logits ``input`` and class indices ``target``.

    Same result as ``torch.nn.functional.cross_entropy(input, target, weight, size_average,
    ignore_index, reduce, reduction, label_smoothing)`` -- the same positional order, with
    torch's meaning and warning for its deprecated ``size_average`` / ``reduce`` -- for ``(N, C)``,
    ``(C,)`` and ``(N, C, d1, ...)`` inputs, with these differences and extras:

    * the loss is float32 for float16/bfloat16 input (float64 for float64); the math is float32;
    * with ``reduction="mean"`` and every target ignored, the loss is 0, not NaN;
    * ``z_loss``: adds ``z_loss * logsumexp(logits)**2`` per counted row;
    * ``softcap``: logits become ``softcap * tanh(logits / softcap)`` before the softmax;
    * ``logit_scale``: logits are multiplied by it first (before the soft cap);
    * ``num_items``: divide the summed loss by this count (an int or a 0-dim tensor, read on the
      device) instead of the mean's own denominator: the normaliser of gradient accumulation;
    * ``return_lse``: also return the per-row logsumexp (shaped like ``target``, differentiable);
    * ``inplace_backward``: the gradient overwrites ``input``'s storage. Safe only when nothing
      else needs ``input`` after the loss (the usual ``logits -> loss`` case). Autograd notices a
      later use by a saved-tensor check (``input``'s version counter is bumped); a leaf ``input``
      would have its values replaced by its gradient.

    A target outside ``[0, C)`` other than ``ignore_index`` raises on CPU; on CUDA that row's loss
    and gradient are NaN (checking would need a host sync). Nothing is read out of bounds.

    Vocabulary-parallel: ``input`` may be a ``DTensor`` sharded over the class dimension on one
    mesh dimension (replicated on any others) -- the logits of a ``ColwiseParallel`` LM head with
    ``use_local_output=False``. Each rank reduces its slice; the rows combine with all-reduces of
    N-vectors (:mod:`fastgd.losses.vocab_parallel`); every option works. ``target``, ``weight``
    and ``num_items`` are plain tensors or DTensors (used whole). The loss is a plain tensor, the
    same on every rank of the vocabulary's group; the gradient of ``input`` is a DTensor with its
    placements. ``inplace_backward`` does not apply there (the gradient is a new tensor).
    """
    size_average, ignore_index, reduce, reduction, label_smoothing = legacy.cross_entropy_order(
        size_average, ignore_index, reduce, reduction, label_smoothing)
    reduction = legacy.legacy_reduction(size_average, reduce, reduction)
    refuse_gradient_transforms("fastgd.cross_entropy", input)
    class_dim = 0 if isinstance(input, Tensor) and input.dim() == 1 else 1
    input, shard = vocab_parallel.unwrap_classes(input, class_dim, "input")
    target, weight, num_items = (vocab_parallel.whole(t, what) for t, what in (
        (target, "target"), (weight, "weight"), (num_items, "num_items")))
    options = checked_options(ignore_index=ignore_index, label_smoothing=label_smoothing,
                              logit_scale=logit_scale, softcap=softcap, reduction=reduction,
                              z_loss=z_loss, num_items=num_items)
    logits, flat_target, out_shape = _as_rows(input, target, one_slice=shard is not None)
    n_classes = shard.classes.total if shard is not None else logits.shape[1]
    weight = check_class_weight(weight, n_classes, logits)
    if shard is not None:
        ce, lse = vocab_parallel.rows(logits, flat_target, weight, options, shard)
        return assemble_loss(ce, lse, flat_target, weight=weight, ignore_index=ignore_index,
                             reduction=reduction, z_loss=z_loss, num_items=num_items,
                             out_shape=out_shape, return_lse=return_lse)
    if inplace_backward and guard.has_internal_overlap(logits):
        raise InvalidValueError(
            f"inplace_backward=True writes the gradient over the logits, but elements of input "
            f"share memory (strides {tuple(input.stride())}: an expanded or broadcast tensor); "
            f"pass input.contiguous(), or inplace_backward=False")

    # the op's schema lists the options in RowOptions' order (cross_entropy_ops)
    ce, lse = cross_entropy_rows(logits, flat_target, weight, *options, bool(inplace_backward))
    return assemble_loss(ce, lse, flat_target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, z_loss=z_loss, num_items=num_items,
                         out_shape=out_shape, return_lse=return_lse)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` backed by :func:`fastgd.cross_entropy`, with its extras as
    constructor keywords; ``num_items`` is given per call: ``loss_fn(logits, target,
    num_items=n)``."""

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        logit_scale: float = 1.0,
        return_lse: bool = False,
        inplace_backward: bool = False,
    ) -> None:
        label_smoothing = as_float_option(label_smoothing, "label_smoothing")
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        check_options(self.reduction, label_smoothing, z_loss, softcap, logit_scale, None)
        self.z_loss = z_loss
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.return_lse = return_lse
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor, num_items=None):
        return cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            logit_scale=self.logit_scale, num_items=num_items, return_lse=self.return_lse,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, logit_scale={self.logit_scale}")


def assemble_loss(ce: Tensor, lse: Tensor, target: Tensor, *, weight: Optional[Tensor],
                  ignore_index: int, reduction: str, z_loss: float, num_items, out_shape,
                  return_lse: bool):
    """What a loss built on the per-row ops returns, from per-row ``ce`` and ``lse`` over the
    flattened ``target``: the reduced loss (shaped ``out_shape`` for ``reduction="none"``), and
    with ``return_lse`` the ``lse`` shaped ``out_shape`` too. Shared by every loss of fastgd; the
    formulas are in the module docstring. Plain torch ops on N-vectors."""
    loss = _reduce(ce, lse, target, weight, ignore_index, reduction, z_loss, num_items)
    if reduction == "none":
        loss = loss.reshape(out_shape)
    return (loss, lse.reshape(out_shape)) if return_lse else loss


def _reduce(ce, lse, target, weight, ignore_index, reduction, z_loss, num_items) -> Tensor:
    counted = target != ignore_index
    z_term = z_loss * torch.where(counted, lse * lse, 0.0) if z_loss else None
    if reduction == "none":
        return ce + z_term if z_term is not None else ce
    total = ce.sum() + (z_term.sum() if z_term is not None else 0.0)
    if num_items is not None:
        return total / _as_denominator(num_items, total)
    if reduction == "sum":
        return total
    loss = _safe_divide(ce.sum(), _counted_weight(target, counted, weight, ce.dtype))
    if z_term is not None:
        loss = loss + _safe_divide(z_term.sum(), counted.sum().to(ce.dtype))
    return loss


# --------------------------------------------------------------------------- helpers
def _safe_divide(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, 0 where ``count == 0`` -- with a gradient of 0, not NaN."""
    empty = count == 0
    return torch.where(empty, 0.0, total / torch.where(empty, 1.0, count))


def _counted_weight(target, counted, weight, dtype) -> Tensor:
    if weight is None:
        return counted.sum().to(dtype)
    safe = torch.where(counted & (target >= 0) & (target < weight.shape[0]), target, 0)
    return torch.where(counted, weight[safe.long()], 0.0).sum().to(dtype)


def _as_denominator(num_items, like: Tensor):
    """A tensor ``num_items`` in ``like``'s dtype (keep it on the loss's device: a CPU tensor
    would be copied to the GPU on every call), or a Python number as it is (a scalar operand:
    no host-to-device copy, nothing for a CUDA graph to trip over)."""
    if isinstance(num_items, Tensor):
        return num_items.to(device=like.device, dtype=like.dtype)
    return float(num_items)


def _as_rows(input: Tensor, target: Tensor,
             one_slice: bool = False) -> tuple[Tensor, Tensor, torch.Size]:
    """``(N, C)`` logits, ``(N,)`` targets and the shape of a per-element loss. ``one_slice``:
    ``input`` is one rank's slice of the classes, which may hold none of them."""
    if not isinstance(input, Tensor):
        raise InvalidTypeError(f"input must be a torch.Tensor of logits, got "
                               f"{type(input).__name__}")
    if not isinstance(target, Tensor):
        raise InvalidTypeError(f"target must be a torch.Tensor of class indices, got "
                               f"{type(target).__name__}")
    if not input.is_floating_point():
        raise UnsupportedDtypeError(f"input must hold floating-point logits, got {input.dtype}; "
                                    f"convert with input.float()")
    if input.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise UnsupportedDtypeError(f"input dtype {input.dtype} is not supported: use float16, "
                                    f"bfloat16, "
                                    f"float32 or float64")
    if target.is_floating_point() or target.is_complex():
        raise InvalidTypeError(
            f"target must hold integer class indices, got {target.dtype}; probability "
            f"(soft) targets are not supported: use torch.nn.functional.cross_entropy for them")
    if target.dtype == torch.bool:
        raise InvalidTypeError("target must hold class indices, got a bool tensor; convert with "
                               "target.long()")
    if target.dtype not in (torch.int64, torch.int32):  # uint8, int16, ...: as torch, any int
        target = target.long()
    if target.device != input.device:
        raise InvalidValueError(f"target is on {target.device} but input is on {input.device}; "
                                f"move them to the same device")
    if input.dim() == 0:
        raise InvalidValueError("input must have a class dimension: shape (C,), (N, C) or "
                                "(N, C, d1, ...)")
    if input.dim() == 1:  # (C,) logits with a 0-dim target
        if target.dim() != 0:
            raise InvalidValueError(f"for input of shape (C,) = {tuple(input.shape)}, target "
                                    f"must be "
                                    f"0-dim, got shape {tuple(target.shape)}")
        logits, flat_target, out_shape = input.unsqueeze(0), target.reshape(1), target.shape
    else:
        expected = (input.shape[0], *input.shape[2:])
        if tuple(target.shape) != expected:
            raise InvalidValueError(
                f"target shape {tuple(target.shape)} does not match input shape "
                f"{tuple(input.shape)}: expected {expected} (class dimension 1 of input removed)")
        if input.dim() == 2:
            logits = input
        else:  # (N, C, d1, ...): classes last, one row per (n, d1, ...)
            n_rows = target.numel()  # explicit: -1 is ambiguous for a slice of no classes
            logits = input.movedim(1, -1).reshape(n_rows, input.shape[1])
        flat_target, out_shape = target.reshape(-1), target.shape
    if logits.shape[1] == 0 and not one_slice:
        raise InvalidValueError("input has 0 classes; cross-entropy needs at least one class")
    if logits.shape[1] > MAX_CLASSES:
        raise InvalidValueError(f"input has {logits.shape[1]} classes; at most {MAX_CLASSES} are "
                                f"supported")
    if (logits.shape[1] - 1) * logits.stride(1) >= 2**31:
        # The kernels address a row's classes with 32-bit offsets (row offsets are 64-bit).
        logits = logits.contiguous()
    return logits, flat_target.contiguous(), out_shape
