"""The PyTorch path of the per-row cross-entropy: same inputs, outputs and math as the kernels in
``fastgd/kernels/cross_entropy.py`` (see its docstring for the formulas), for machines where the
kernels do not run. Computes in float32 (float64 for float64 logits)."""
from __future__ import annotations

from typing import Optional

import torch

from ..dtypes import compute_dtype


def _z(logits: torch.Tensor, logit_scale: float, softcap: float) -> torch.Tensor:
    """The scaled, soft-capped logits in the compute dtype: ``logits`` itself when that changes
    nothing (the callers only read it)."""
    z = logits.to(compute_dtype(logits.dtype))
    if logit_scale != 1.0:
        z = z * logit_scale
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    return z


def _logsumexp(z: torch.Tensor) -> torch.Tensor:
    """Row logsumexp as the kernels compute it, ``max + log(sum(exp(z - max)))``: NaN for a row
    holding +inf (as F.cross_entropy), -inf for a row of -inf only. (torch.logsumexp returns
    +inf for the former, which would make the loss inf where torch's is NaN.) One chunk-sized
    temporary, exponentiated in place."""
    row_max = z.amax(dim=1, keepdim=True)
    shift = torch.where(row_max == float("-inf"), 0.0, row_max)
    return (shift + torch.log(torch.sub(z, shift).exp_().sum(dim=1, keepdim=True)))[:, 0]


def _target_info(target, weight, n_classes, ignore_index, dtype):
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_classes)
    safe_target = torch.where(in_range, target, 0).long()
    w_t = weight[safe_target].to(dtype) if weight is not None else torch.ones((), dtype=dtype)
    return safe_target, ignored, in_range, w_t


def rows_forward(logits, target, weight, options):
    """Per-row ``(ce, lse)``; ``options`` is a ``cross_entropy_ops.RowOptions``."""
    ignore_index, label_smoothing = options.ignore_index, options.label_smoothing
    n_classes = logits.shape[1]
    z = _z(logits, options.logit_scale, options.softcap)
    lse = _logsumexp(z)
    safe_target, ignored, in_range, w_t = _target_info(
        target, weight, n_classes, ignore_index, z.dtype
    )
    z_t = z.gather(1, safe_target[:, None])[:, 0]
    ce = (1.0 - label_smoothing) * w_t * (lse - z_t)
    if label_smoothing > 0:
        w = weight.to(z.dtype) if weight is not None else None
        w_sum = w.sum() if w is not None else n_classes
        weighted_z_sum = (z * w).sum(1) if w is not None else z.sum(1)
        ce = ce + label_smoothing / n_classes * (w_sum * lse - weighted_z_sum)
    ce = torch.where(ignored, 0.0, torch.where(in_range, ce, float("nan")))
    return ce, lse


def shard_rows_forward(logits, target, weight, options, classes):
    """One rank's parts ``(lse_r, zt_r, wz_r)`` of a vocabulary-parallel row; ``classes`` is a
    ``cross_entropy_ops.ClassSlice``, ``weight`` every class's."""
    z = _z(logits, options.logit_scale, options.softcap)
    local_target = target.long() - classes.offset
    held = (local_target >= 0) & (local_target < logits.shape[1])
    z_t = z.gather(1, torch.where(held, local_target, 0)[:, None])[:, 0]
    if options.label_smoothing > 0:
        w = _weight_slice(weight, classes, logits.shape[1], z.dtype)
        weighted_z = (z * w).sum(1) if w is not None else z.sum(1)
    else:
        weighted_z = torch.zeros_like(z_t)
    return _logsumexp(z), torch.where(held, z_t, 0.0), weighted_z


def _weight_slice(weight, classes, n_classes, dtype):
    if weight is None:
        return None
    return weight[classes.offset:classes.offset + n_classes].to(dtype)


def rows_backward_in_place(logits, target, weight, lse, grad_ce, grad_lse, options,
                           classes) -> bool:
    """:func:`rows_backward` written over ``logits`` itself, with no chunk-sized temporary --
    where it can be: logits already in the compute dtype and no soft cap (whose chain rule needs
    the capped logits beside the probabilities). Returns whether it did."""
    if options.softcap > 0 or logits.dtype != compute_dtype(logits.dtype):
        return False
    if options.logit_scale != 1.0:
        logits.mul_(options.logit_scale)
    _gradient_from_z(logits, logits, target, weight, lse, grad_ce, grad_lse, options, classes)
    return True


def rows_backward(logits, target, weight, lse, grad_ce, grad_lse: Optional[torch.Tensor],
                  options, classes):
    """``d loss / d logits`` (a new tensor in the logits' dtype), for the slice ``classes`` (a
    ``cross_entropy_ops.ClassSlice``) of the row's classes; ``lse`` is the whole row's."""
    z = _z(logits, options.logit_scale, options.softcap)
    dz = _gradient_from_z(torch.empty_like(z), z, target, weight, lse, grad_ce, grad_lse,
                          options, classes)
    return dz.to(logits.dtype)


def _gradient_from_z(out, z, target, weight, lse, grad_ce, grad_lse, options, classes):
    """``d loss / d logits`` from the scaled, capped logits ``z``, into ``out``, which may be
    ``z`` itself when there is no soft cap (every step after the first then reads only ``out``;
    the soft cap's chain rule reads ``z`` again)."""
    ignore_index, label_smoothing = options.ignore_index, options.label_smoothing
    softcap, logit_scale = options.softcap, options.logit_scale
    n_classes = classes.total
    safe_target, ignored, in_range, w_t = _target_info(
        target, weight, n_classes, ignore_index, z.dtype
    )
    local_target = safe_target - classes.offset
    held = (local_target >= 0) & (local_target < z.shape[1])
    spike_at = torch.where(held, local_target, 0)[:, None]
    g_ce = torch.where(ignored, 0.0, torch.where(in_range, grad_ce.to(z.dtype), float("nan")))
    p = torch.sub(z, lse[:, None].to(z.dtype), out=out).exp_()
    coef_true = g_ce * (1.0 - label_smoothing) * w_t  # times (p_c - [c == t])
    coef_p = grad_lse.to(z.dtype) if grad_lse is not None else torch.zeros_like(g_ce)  # times p_c
    coef_w = g_ce * label_smoothing / n_classes  # times -w_c
    if label_smoothing > 0:
        w = weight.to(z.dtype) if weight is not None else None
        coef_p = coef_p + coef_w * (w.sum() if w is not None else n_classes)
    # As the kernel (see its comment): coef_true times (p - onehot) with p_t - 1 exact near 1,
    # here in place as (coef_true + coef_p) * (p - onehot) + coef_p * onehot.
    # (the spike only on the slice holding the target)
    p.scatter_add_(1, spike_at, torch.where(held, -1.0, 0.0).to(p.dtype)[:, None])
    dz = p.mul_((coef_true + coef_p)[:, None])
    dz.scatter_add_(1, spike_at, torch.where(held, coef_p, 0.0)[:, None])
    if label_smoothing > 0:
        w_here = _weight_slice(weight, classes, dz.shape[1], z.dtype)
        dz -= coef_w[:, None] * (w_here[None, :] if w_here is not None else 1.0)
    if softcap > 0:
        dz.mul_(1.0 - (z / softcap) ** 2)
    if grad_lse is None:  # as the kernel: an ignored row's gradient is exactly zero
        dz.masked_fill_(ignored[:, None], 0.0)
    if logit_scale != 1.0:
        dz.mul_(logit_scale)
    return dz
