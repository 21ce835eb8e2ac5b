"""The checks of the losses' options and class weights, shared by :func:`fastgd.cross_entropy`
and :func:`fastgd.linear_cross_entropy` (and their modules): one wording and one exception type
per mistake (torch's, where torch refuses the same thing)."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import backend
from ..dtypes import compute_dtype
from ..errors import InvalidTypeError, InvalidValueError
from .cross_entropy_ops import RowOptions

REDUCTIONS = ("none", "mean", "sum")


def check_class_weight(weight, n_classes, logits) -> Optional[Tensor]:
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise InvalidTypeError("weight must be a floating-point tensor of one weight per class")
    if weight.shape != (n_classes,):
        raise InvalidValueError(f"weight must have shape (C,) = ({n_classes},), got "
                                f"{tuple(weight.shape)}")
    if weight.device != logits.device:
        raise InvalidValueError(f"weight is on {weight.device} but input is on {logits.device}")
    return weight.to(compute_dtype(logits.dtype)).contiguous()


def checked_options(*, ignore_index, label_smoothing, logit_scale, softcap, reduction, z_loss,
                    num_items) -> RowOptions:
    """Check every option a loss call takes; return the row ops' share of them normalised
    (``softcap=None`` becomes 0.0, the ops' "no soft cap")."""
    label_smoothing = as_float_option(label_smoothing, "label_smoothing")
    check_options(reduction, label_smoothing, z_loss, softcap, logit_scale, num_items)
    return RowOptions(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
                      logit_scale=float(logit_scale),
                      softcap=float(softcap) if softcap is not None else 0.0)


def check_options(reduction, label_smoothing, z_loss, softcap, logit_scale, num_items) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction: expected one of "
                         f"{REDUCTIONS}")
    if not _is_real(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
        raise InvalidValueError(f"label_smoothing must be between 0.0 and 1.0. Got: "
                                f"{label_smoothing!r}")
    if not _is_real(z_loss) or not 0 <= z_loss < math.inf:
        raise InvalidValueError(f"z_loss={z_loss!r}: must be a finite float >= 0 (0 disables it)")
    if softcap is not None and (not _is_real(softcap) or not 0 < softcap < math.inf):
        raise InvalidValueError(f"softcap={softcap!r}: must be a finite float > 0, or None to "
                                f"disable it")
    if not _is_real(logit_scale) or not 0 < logit_scale < math.inf:
        raise InvalidValueError(f"logit_scale={logit_scale!r}: must be a finite float > 0")
    if num_items is not None:
        _check_num_items(num_items, reduction)


def _check_num_items(num_items, reduction) -> None:
    """A positive finite count. A tensor's value is checked where that costs no device sync
    (host memory, outside torch.compile); on a GPU a count <= 0 gives an inf/NaN loss."""
    if reduction == "none":
        raise ValueError("num_items divides the summed loss: use it with reduction='mean' "
                         "or 'sum', not 'none'")
    if isinstance(num_items, Tensor):
        if num_items.dim() != 0:
            raise InvalidValueError(f"num_items must be a 0-dim tensor, got shape "
                                    f"{tuple(num_items.shape)}")
        if num_items.is_complex() or num_items.dtype == torch.bool:
            raise InvalidTypeError(f"num_items must be a real number, got a {num_items.dtype} "
                                   f"tensor")
        if backend.can_check_on_host(num_items) and not torch.compiler.is_compiling():
            if not bool((num_items > 0) & torch.isfinite(num_items)):
                raise InvalidValueError(f"num_items={float(num_items)!r}: must be a finite "
                                        f"count > 0")
    elif isinstance(num_items, bool) or not isinstance(num_items, numbers.Real):
        raise InvalidTypeError(f"num_items must be an int or a 0-dim tensor, got "
                               f"{type(num_items).__name__}")
    elif not 0 < num_items < math.inf:
        raise InvalidValueError(f"num_items={num_items!r}: must be a finite count > 0")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def as_float_option(value, name: str):
    """A float option given as a one-element tensor (torch accepts ``label_smoothing=
    torch.tensor(0.1)``), read once on the host -- a device sync for a GPU tensor, as in torch;
    anything else is returned as it is for :func:`check_options` to judge."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise InvalidValueError(f"{name} must be a float (or a one-element real tensor), "
                                    f"got a tensor of shape {tuple(value.shape)} and dtype "
                                    f"{value.dtype}")
        return float(value)
    return value
