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
from torch.nn.modules.loss import _WeightedLoss

from . import legacy, vocab_parallel
from . import linear_cross_entropy_eager as eager
from . import linear_cross_entropy_fallback as fallback
from .linear_cross_entropy_dtypes import autocast_operands, chunk_size_of
from .cross_entropy import assemble_loss
from ..errors import InvalidTypeError, InvalidValueError
from .checks import as_float_option, check_class_weight, check_options, checked_options
from .linear_cross_entropy_ops import linear_cross_entropy_rows
from .transforms import refuse_gradient_transforms

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *legacy_bias: Tensor,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    options=None,
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
    logit_scale: float = 1.0,
    num_items: Union[int, Tensor, None] = None,
    return_lse: bool = False,
    chunk_size: Optional[int] = None,
    bias=legacy._NOT_GIVEN,
    class_weight=legacy._NOT_GIVEN,
):
    """Cross-entropy of the logits ``input @ linear_weight.T + linear_bias`` against class
    indices ``target``, without materialising the logits.

    torch 2.13's ``torch.nn.functional.linear_cross_entropy`` signature and meaning: ``input``
    ``(*, H)`` (e.g. an LM's ``(B, T, H)``, or one ``(H,)`` sample), ``linear_weight`` ``(V, H)``
    as ``nn.Linear`` stores it, ``linear_bias`` ``(V,)`` or None; ``target``:
    ``input.shape[:-1]`` int64/int32 class indices; ``weight``: per-class weights ``(V,)``;
    ``ignore_index=None`` means -100, as in torch. Returns what ``fastgd.cross_entropy(logits,
    target, weight, ...)`` returns for those logits -- a float32 scalar (float64 for float64
    inputs), or for ``reduction="none"`` (and the ``lse`` of ``return_lse``) a tensor shaped like
    ``target`` -- with gradients for ``input``, ``linear_weight`` and ``linear_bias``, each in its
    own dtype and only if it requires grad.

    ``options``: torch's ``LinearCrossEntropyOptions``. fastgd always chunks; of the options only
    ``batch_chunk_size`` is read (as ``chunk_size``, when that is not given). Extras, keyword
    only, as in :func:`fastgd.cross_entropy`: ``z_loss``, ``softcap``, ``logit_scale``,
    ``num_items``, ``return_lse``; ``chunk_size``: token rows per chunk, by default the largest
    power of two whose working set fits a fixed 1 GiB budget (decided from shapes alone: no host
    sync).

    Dtypes: under ``torch.autocast`` the projection runs in the autocast dtype, as ``F.linear``
    would (``input``, ``linear_weight`` and ``linear_bias`` cast to it). Outside autocast, a
    ``linear_weight`` / ``linear_bias`` of another float dtype than ``input`` is cast to
    ``input``'s: the activations decide the matmul's precision (``F.linear`` would raise). The
    loss stays float32 either way.

    Vocabulary-parallel: ``linear_weight`` (and ``linear_bias``) may be a ``DTensor`` sharded
    over the vocabulary (``Shard(0)``, a ``ColwiseParallel`` LM head), ``input`` plain or a
    DTensor of any placement (used whole: sequence-sharded states are gathered). Each rank runs
    the chunked path on its slice; rows combine as in :func:`fastgd.cross_entropy`; the backward
    adds one all-reduce of ``input``'s gradient over the vocabulary's group. The loss is a plain
    tensor.

    Deprecated, for one release (``DeprecationWarning``): the bias as a 4th positional argument
    or ``bias=``, and ``class_weight=`` for ``weight=``.
    """
    refuse_gradient_transforms("fastgd.linear_cross_entropy", input, linear_weight, linear_bias)
    bias = legacy.linear_ce_bias(legacy_bias, linear_bias, bias)
    class_weight = legacy.linear_ce_class_weight(weight, class_weight)
    if chunk_size is None:
        chunk_size = chunk_size_of(options)
    hidden, weight, bias = autocast_operands(input, linear_weight, bias)
    device_type = hidden.device.type if isinstance(hidden, Tensor) else "cpu"
    with torch.autocast(device_type, enabled=False):  # the chunks choose their own dtypes
        return _linear_cross_entropy(
            hidden, weight, target, bias, class_weight,
            ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            logit_scale=logit_scale, num_items=num_items, return_lse=return_lse,
            chunk_size=chunk_size)


def _linear_cross_entropy(hidden, weight, target, bias, class_weight, *, ignore_index, reduction,
                          label_smoothing, z_loss, softcap, logit_scale, num_items, return_lse,
                          chunk_size):
    weight, shard = vocab_parallel.unwrap_classes(weight, 0, "linear_weight")
    bias, bias_shard = vocab_parallel.unwrap_classes(bias, 0, "linear_bias")
    if (bias_shard is not None or shard is not None) and bias is not None and (
            bias_shard is None or shard is None or bias_shard.classes != shard.classes):
        raise InvalidValueError("linear_bias must be sharded over the vocabulary as "
                                "linear_weight is (both Shard(0) on the same mesh "
                                "dimension), or both be whole")
    hidden = vocab_parallel.whole_replicated(hidden, "input")
    target, class_weight, num_items = (vocab_parallel.whole(t, what) for t, what in (
        (target, "target"), (class_weight, "weight"), (num_items, "num_items")))
    options = checked_options(ignore_index=ignore_index, label_smoothing=label_smoothing,
                              logit_scale=logit_scale, softcap=softcap, reduction=reduction,
                              z_loss=z_loss, num_items=num_items)
    if isinstance(class_weight, Tensor) and class_weight.dim() == 2:
        raise InvalidValueError(f"weight= is the per-class weights, shape (V,), as in torch's "
                                f"F.linear_cross_entropy; got {tuple(class_weight.shape)}: the "
                                f"(V, H) projection is linear_weight, the 2nd argument")
    if shard is None and fallback.takes(weight, target):
        return fallback.linear_cross_entropy(
            hidden, weight, target, bias, class_weight, ignore_index=ignore_index,
            reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            logit_scale=logit_scale, num_items=num_items, return_lse=return_lse)
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
    elif eager.takes(rows, weight, bias):  # the PyTorch path: gradients in the forward
        ce, lse = eager.rows(rows, weight, bias, flat_target, class_weight, options,
                             int(chunk_size or 0))
    else:  # the op's schema lists the options in RowOptions' order (cross_entropy_ops)
        ce, lse = linear_cross_entropy_rows(rows, weight, bias, flat_target, class_weight,
                                            *options, int(chunk_size or 0))
    return assemble_loss(ce, lse, flat_target, weight=class_weight, ignore_index=ignore_index,
                         reduction=reduction, z_loss=z_loss, num_items=num_items,
                         out_shape=out_shape, return_lse=return_lse)


class LinearCrossEntropyLoss(_WeightedLoss):
    """``torch.nn.LinearCrossEntropyLoss`` backed by :func:`linear_cross_entropy`: the module owns
    its head, ``self.linear`` (an ``nn.Linear(in_features, num_classes * prod(out_features))``,
    stored flat as torch stores it, so state dicts move between the two), then ``loss_fn(input,
    target)``. fastgd's extras are keyword-only constructor arguments; ``num_items`` is given
    per call: ``loss_fn(input, target, num_items=n)``.

    Deprecated, for one release: the headless form of fastgd's earlier releases,
    ``LinearCrossEntropyLoss(class_weight=None, ignore_index=-100, reduction="mean", ...)``
    called as ``loss_fn(hidden, weight, target, bias=None, num_items=None)`` on a head the model
    owns. It is what you get, with a ``DeprecationWarning``, when ``in_features`` is not an int;
    :func:`linear_cross_entropy` is the lasting way to apply a head the model owns.
    """

    def __init__(
        self,
        in_features=None,
        num_classes=None,
        *legacy_positional,
        out_features: tuple = (),
        bias: bool = False,
        device=None,
        dtype=None,
        reduction: str = "mean",
        weight: Optional[Tensor] = None,
        ignore_index: Optional[int] = None,
        label_smoothing: float = 0.0,
        options=None,
        z_loss: float = 0.0,
        softcap: Optional[float] = None,
        logit_scale: float = 1.0,
        return_lse: bool = False,
        chunk_size: Optional[int] = None,
        class_weight=legacy._NOT_GIVEN,
    ) -> None:
        headless = in_features is None or isinstance(in_features, Tensor)
        if headless:  # the old (class_weight, ignore_index, reduction, label_smoothing) order
            old = dict(zip(("class_weight", "ignore_index", "reduction", "label_smoothing"),
                           (in_features, num_classes, *legacy_positional)))
            weight = legacy.linear_ce_class_weight(weight, class_weight)
            weight = old.get("class_weight") if weight is None else weight
            ignore_index = old.get("ignore_index", ignore_index)
            reduction = old.get("reduction", reduction)
            label_smoothing = old.get("label_smoothing", label_smoothing)
            legacy.headless_linear_ce_module()
        elif legacy_positional or class_weight is not legacy._NOT_GIVEN:
            raise InvalidTypeError("LinearCrossEntropyLoss(in_features, num_classes, *, ...) "
                                   "takes its other arguments by keyword, as torch's does; the "
                                   "per-class weights are weight=")
        label_smoothing = as_float_option(label_smoothing, "label_smoothing")
        check_options(reduction, label_smoothing, z_loss, softcap, logit_scale, None)
        super().__init__(weight=weight, reduction=reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.options = options
        self.z_loss = z_loss
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.return_lse = return_lse
        self.chunk_size = chunk_size
        self.out_features = tuple(out_features)
        self.num_classes = num_classes if not headless else None
        self.linear = None if headless else nn.Linear(
            in_features, math.prod(self.out_features, start=num_classes), bias=bias,
            device=device, dtype=dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # fastgd 0.1's module stored its per-class weights as "class_weight" (deprecated names:
        # one release); they are torch's "weight" now
        old, new = prefix + "class_weight", prefix + "weight"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input: Tensor, *args, num_items=None, **kwargs):
        """``(input, target)``; headless (deprecated): ``(hidden, weight, target, bias=None)``."""
        if self.linear is None:
            return self._headless(input, *args, num_items=num_items, **kwargs)
        (target,) = args
        head = self.linear
        linear_weight = head.weight.reshape(self.num_classes, *self.out_features,
                                            head.in_features)
        linear_bias = (head.bias.reshape(self.num_classes, *self.out_features)
                       if head.bias is not None else None)
        return self._loss(input, linear_weight, target, linear_bias, num_items)

    def _headless(self, hidden, weight, target, bias=None, num_items=None):
        return self._loss(hidden, weight, target, bias, num_items)

    def _loss(self, input, linear_weight, target, linear_bias, num_items):
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options, z_loss=self.z_loss,
            softcap=self.softcap, logit_scale=self.logit_scale, num_items=num_items,
            return_lse=self.return_lse, chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        head = ("headless (deprecated)" if self.linear is None else
                f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}")
        return (f"{head}, reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
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
    _check_tensor(hidden, "input", "the (*, H) inputs of the head")
    _check_tensor(weight, "linear_weight", "the (V, H) projection, as nn.Linear stores it")
    _check_tensor(target, "target", "class indices")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise InvalidTypeError(f"input dtype {hidden.dtype} is not supported: use float16, "
                               f"bfloat16, "
                               f"float32 or float64")
    if hidden.dim() == 0:
        raise InvalidValueError("input must have a feature dimension: shape (*, H)")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise InvalidValueError(f"linear_weight must have shape (V, H) with H = input.shape[-1] = "
                                f"{hidden.shape[-1]}, got {tuple(weight.shape)}")
    if weight.shape[0] == 0 and not one_slice:
        raise InvalidValueError("linear_weight has 0 rows (V = 0 classes); cross-entropy needs at "
                                "least one")
    for name, other in (("linear_weight", weight), ("linear_bias", bias)):
        if other is None:
            continue
        _check_tensor(other, name, "of input's dtype and device")
        if other.dtype != hidden.dtype:
            raise InvalidTypeError(f"{name} dtype {other.dtype} differs from input dtype "
                                   f"{hidden.dtype}; convert one of them")
        if other.device != hidden.device:
            raise InvalidValueError(f"{name} is on {other.device} but input is on {hidden.device}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise InvalidValueError(f"linear_bias must have shape (V,) = ({weight.shape[0]},), got "
                                f"{tuple(bias.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InvalidTypeError(f"target must hold integer class indices, got {target.dtype}; "
                               f"convert with target.long()")
    if target.dtype not in (torch.int64, torch.int32):  # uint8, int16, ...: as torch, any int
        target = target.long()
    if target.device != hidden.device:
        raise InvalidValueError(f"target is on {target.device} but input is on {hidden.device}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise InvalidValueError(f"target shape {tuple(target.shape)} does not match input shape "
                                f"{tuple(hidden.shape)}: expected {tuple(hidden.shape[:-1])} "
                                f"(input "
                                f"without its last, feature dimension)")
    # (an explicit row count: reshape(-1, 0) is ambiguous when H = 0, where the logits are
    # just the bias, or zeros, as F.linear gives)
    rows = hidden.reshape(math.prod(hidden.shape[:-1]), hidden.shape[-1])
    return rows, target.reshape(-1).contiguous(), target.shape
