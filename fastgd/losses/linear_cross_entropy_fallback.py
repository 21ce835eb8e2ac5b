"""The two cases of torch's ``linear_cross_entropy`` the chunked path does not take, computed
the way torch's own reference path computes them -- the logits materialised -- with a warning
that says so:

* a K-dimensional head, ``linear_weight`` ``(V, d_1, ..., d_K, H)``: the logits are
  ``(N, V, d_1, ..., d_K)``, one ``(V, H)`` projection per position ``d``;
* class-probability targets (a float ``target`` of the logits' shape).

Class-index targets take every fastgd option here too (the loss is :func:`fastgd.cross_entropy`
of the logits); probability targets take torch's options only (they go to
``F.cross_entropy``).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidValueError


def takes(weight, target) -> bool:
    """Whether the call is one of the fallback's cases (and not a plain ``(V, H)`` head with
    class indices)."""
    return (isinstance(weight, Tensor) and weight.dim() > 2) or (
        isinstance(target, Tensor) and target.is_floating_point())


def linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, bias, class_weight, *,
                         ignore_index: int, reduction: str, label_smoothing: float, z_loss,
                         softcap, logit_scale, num_items, return_lse):
    from .cross_entropy import cross_entropy

    warnings.warn("linear_cross_entropy: a K-dimensional linear_weight or class-probability "
                  "targets materialise the logits (as torch's reference path does); the "
                  "chunked path takes a (V, H) weight with class indices", stacklevel=4)
    if weight.dim() > 2 and hidden.dim() != 2:
        raise InvalidValueError(f"a K-dimensional linear_weight {tuple(weight.shape)} needs a "
                                f"batched (N, H) input, got {tuple(hidden.shape)}")
    # (N, H) x (V, d..., H) -> (N, V, d...); (H,) x (V, H) -> (V,)
    logits = torch.tensordot(hidden, weight, dims=([hidden.dim() - 1], [weight.dim() - 1]))
    if bias is not None:
        logits = logits + bias
    if not target.is_floating_point():
        return cross_entropy(logits, target, class_weight, ignore_index=ignore_index,
                             reduction=reduction, label_smoothing=label_smoothing,
                             z_loss=z_loss, softcap=softcap, logit_scale=logit_scale,
                             num_items=num_items, return_lse=return_lse)
    extras = dict(z_loss=z_loss != 0.0, softcap=softcap is not None, logit_scale=logit_scale != 1.0,
                  num_items=num_items is not None, return_lse=bool(return_lse))
    if any(extras.values()):
        given = ", ".join(name for name, used in extras.items() if used)
        raise InvalidValueError(f"class-probability targets take torch's options only; {given} "
                                f"need class-index targets")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # fastgd's rule
    weights = class_weight.to(dtype) if class_weight is not None else None
    return F.cross_entropy(logits.to(dtype), target.to(dtype), weights, reduction=reduction,
                           label_smoothing=label_smoothing)
