"""``fastgd.linear_cross_entropy`` and ``fastgd.LinearCrossEntropyLoss``: the cross-entropy of a
language-model head, ``cross_entropy(hidden @ weight.T + bias, target)``, computed chunk by chunk
over tokens so that the ``N x V`` logits never exist whole (see
:mod:`fastgd.losses.linear_cross_entropy_ops` for the passes and the bytes/FLOPs reasoning).

Peak extra memory: one chunk of logits (``rows x V`` in the input dtype; rows from the 1 GiB
budget of :func:`fastgd.launch_config.linear_cross_entropy_chunk`, or ``chunk_size``) plus, in the
backward, an fp32 ``V x H`` accumulator for ``d_weight`` (none is needed when ``weight`` is fp32:
the accumulator *is* the gradient) and an fp32 ``V`` one for ``d_bias``.

The loss is assembled from the per-row ``ce`` and ``lse`` exactly as :func:`fastgd.cross_entropy`
assembles it (same reductions, z-loss, ``num_items``, all-ignored batches giving 0), so the two
agree option for option.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from . import vocab_parallel
from .cross_entropy import assemble_loss
from ..errors import InvalidTypeError, InvalidValueError
from .checks import as_float_option, check_class_weight, check_options, checked_options
from .linear_cross_entropy_ops import linear_cross_entropy_rows

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Optional[Tensor] = None,
    *,
    class_weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
    num_items: Union[int, Tensor, None] = None,
    return_lse: bool = False,
    chunk_size: Optional[int] = None,
):
    """Cross-entropy of the logits ``hidden @ weight.T + bias`` against class indices ``target``,
    without materialising the logits.

    ``hidden``: ``(*, H)`` (e.g. an LM's ``(B, T, H)``), ``weight``: ``(V, H)`` as ``nn.Linear``
    stores it, ``bias``: ``(V,)`` or None, all of one float dtype; ``target``: ``hidden.shape[:-1]``
    int64/int32 class indices. Returns what ``fastgd.cross_entropy(logits.flatten(0, -2),
    target.flatten(), class_weight, ...)`` returns for those logits -- a scalar, or for
    ``reduction="none"`` (and the ``lse`` of ``return_lse``) a tensor shaped like ``target`` --
    with gradients for ``hidden``, ``weight`` and ``bias``, each only if it requires grad.

    Options as :func:`fastgd.cross_entropy` (``class_weight`` is its ``weight``: per-class
    weights, renamed here because ``weight`` is the projection). ``chunk_size``: token rows per
    chunk; by default the largest power of two whose working set fits a fixed 1 GiB budget
    (decided from shapes alone: no host sync).

    Vocabulary-parallel: ``weight`` (and ``bias``) may be a ``DTensor`` sharded over the
    vocabulary (``Shard(0)``, a ``ColwiseParallel`` LM head), ``hidden`` plain or a DTensor of
    any placement (used whole: sequence-sharded states are gathered). Each rank runs the chunked
    path on its slice; rows combine as in :func:`fastgd.cross_entropy`; the backward adds one
    all-reduce of ``hidden``'s gradient over the vocabulary's group. The loss is a plain tensor.
    """
    weight, shard = vocab_parallel.unwrap_classes(weight, 0, "weight")
    bias, bias_shard = vocab_parallel.unwrap_classes(bias, 0, "bias")
    if (bias_shard is not None or shard is not None) and bias is not None and (
            bias_shard is None or shard is None or bias_shard.classes != shard.classes):
        raise InvalidValueError("bias must be sharded over the vocabulary as weight is (both "
                                "Shard(0) on the same mesh dimension), or both be whole")
    hidden = vocab_parallel.whole_replicated(hidden, "hidden")
    target, class_weight, num_items = (vocab_parallel.whole(t, what) for t, what in (
        (target, "target"), (class_weight, "class_weight"), (num_items, "num_items")))
    options = checked_options(ignore_index=ignore_index, label_smoothing=label_smoothing,
                              logit_scale=logit_scale, softcap=softcap, reduction=reduction,
                              z_loss=z_loss, num_items=num_items)
    rows, flat_target, out_shape = _as_rows(hidden, weight, target, bias,
                                            one_slice=shard is not None)
    n_classes = shard.classes.total if shard is not None else weight.shape[0]
    class_weight = check_class_weight(class_weight, n_classes, rows)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise InvalidValueError(f"chunk_size={chunk_size!r}: must be an int >= 1, or None for the "
                                f"default from the memory budget")

    if shard is not None:
        ce, lse = vocab_parallel.linear_rows(rows, weight, bias, flat_target, class_weight,
                                             options, int(chunk_size or 0), shard)
    else:  # the op's schema lists the options in RowOptions' order (cross_entropy_ops)
        ce, lse = linear_cross_entropy_rows(rows, weight, bias, flat_target, class_weight,
                                            *options, int(chunk_size or 0))
    return assemble_loss(ce, lse, flat_target, weight=class_weight, ignore_index=ignore_index,
                         reduction=reduction, z_loss=z_loss, num_items=num_items,
                         out_shape=out_shape, return_lse=return_lse)


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`: options in the constructor, then
    ``loss_fn(hidden, weight, target, bias=None, num_items=None)``."""

    def __init__(
        self,
        class_weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        logit_scale: float = 1.0,
        return_lse: bool = False,
        chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        label_smoothing = as_float_option(label_smoothing, "label_smoothing")
        check_options(reduction, label_smoothing, z_loss, softcap, logit_scale, None)
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.return_lse = return_lse
        self.chunk_size = chunk_size

    def forward(self, hidden: Tensor, weight: Tensor, target: Tensor,
                bias: Optional[Tensor] = None, num_items=None):
        return linear_cross_entropy(
            hidden, weight, target, bias, class_weight=self.class_weight,
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            logit_scale=self.logit_scale, num_items=num_items, return_lse=self.return_lse,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, logit_scale={self.logit_scale}, "
                f"chunk_size={self.chunk_size}")


# --------------------------------------------------------------------------- helpers
def _check_tensor(value, name: str, what: str) -> None:
    if not isinstance(value, Tensor):
        raise InvalidTypeError(f"{name} must be a torch.Tensor ({what}), got "
                               f"{type(value).__name__}")


def _as_rows(hidden, weight, target, bias,
             one_slice: bool = False) -> tuple[Tensor, Tensor, torch.Size]:
    """``(N, H)`` hidden rows, ``(N,)`` targets and the shape of a per-token loss. ``one_slice``:
    ``weight`` is one rank's slice of the vocabulary, which may hold no class."""
    _check_tensor(hidden, "hidden", "the (*, H) inputs of the head")
    _check_tensor(weight, "weight", "the (V, H) projection, as nn.Linear stores it")
    _check_tensor(target, "target", "class indices")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise InvalidTypeError(f"hidden dtype {hidden.dtype} is not supported: use float16, "
                               f"bfloat16, "
                               f"float32 or float64")
    if hidden.dim() == 0:
        raise InvalidValueError("hidden must have a feature dimension: shape (*, H)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise InvalidValueError(f"weight must have shape (V, H) with H = hidden.shape[-1] = "
                                f"{hidden.shape[-1]}, got {tuple(weight.shape)}")
    if weight.shape[0] == 0 and not one_slice:
        raise InvalidValueError("weight has 0 rows (V = 0 classes); cross-entropy needs at "
                                "least one")
    for name, other in (("weight", weight), ("bias", bias)):
        if other is None:
            continue
        _check_tensor(other, name, "of hidden's dtype and device")
        if other.dtype != hidden.dtype:
            raise InvalidTypeError(f"{name} dtype {other.dtype} differs from hidden dtype "
                                   f"{hidden.dtype}; convert one of them (as F.linear requires)")
        if other.device != hidden.device:
            raise InvalidValueError(f"{name} is on {other.device} but hidden is on {hidden.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise InvalidValueError(f"bias must have shape (V,) = ({weight.shape[0]},), got "
                                f"{tuple(bias.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InvalidTypeError(f"target must hold integer class indices, got {target.dtype}; "
                               f"convert with target.long()")
    if target.dtype not in (torch.int64, torch.int32):  # uint8, int16, ...: as torch, any int
        target = target.long()
    if target.device != hidden.device:
        raise InvalidValueError(f"target is on {target.device} but hidden is on {hidden.device}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise InvalidValueError(f"target shape {tuple(target.shape)} does not match hidden shape "
                                f"{tuple(hidden.shape)}: expected {tuple(hidden.shape[:-1])} "
                                f"(hidden "
                                f"without its last, feature dimension)")
    # (an explicit row count: reshape(-1, 0) is ambiguous when H = 0, where the logits are
    # just the bias, or zeros, as F.linear gives)
    rows = hidden.reshape(math.prod(hidden.shape[:-1]), hidden.shape[-1])
    return rows, target.reshape(-1).contiguous(), target.shape
