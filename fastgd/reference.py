"""Reference implementations in plain PyTorch, for tests and benchmarks.

``reference_cross_entropy`` gives fastgd.cross_entropy's documented semantics built from
``torch.nn.functional.cross_entropy`` itself, computed in the input's dtype (PyTorch's own answer
in that precision) or, with ``upcast=True``, in float64 (the truth the tests measure against).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_cross_entropy(
    input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
    z_loss=0.0, softcap=None, logit_scale=1.0, num_items=None, return_lse=False, upcast=False,
):
    x = input.double() if upcast else input
    w = weight.to(x.dtype) if weight is not None else None
    z = x * logit_scale if logit_scale != 1.0 else x
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    class_dim = 0 if z.dim() == 1 else 1
    lse = torch.logsumexp(z, dim=class_dim)
    counted = target != ignore_index
    z_rows = torch.where(counted, z_loss * lse * lse, 0.0)

    def ce(reduction_):
        return F.cross_entropy(z, target, w, ignore_index=ignore_index, reduction=reduction_,
                               label_smoothing=label_smoothing)

    if reduction == "none":
        loss = ce("none") + z_rows
    elif num_items is not None:
        loss = (ce("sum") + z_rows.sum()) / num_items
    elif reduction == "sum":
        loss = ce("sum") + z_rows.sum()
    elif not counted.any():
        loss = (z * 0).sum()  # documented: 0 (torch would give NaN), with a zero gradient
    else:
        loss = ce("mean") + z_rows.sum() / counted.sum()
    return (loss, lse) if return_lse else loss
