"""The argument names and orders fastgd's losses used before they took torch's, kept for one
release behind a ``DeprecationWarning`` -- the one place that knows them.

* ``linear_cross_entropy(hidden, weight, target, bias, *, class_weight=...)`` is now torch
  2.13's ``linear_cross_entropy(input, linear_weight, target, *, linear_bias=..., weight=...)``:
  a 4th positional argument or ``bias=`` is the projection's bias, ``class_weight=`` the
  per-class weights.
* ``cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing)`` is now in
  torch's order, whose 4th and 6th slots are the deprecated ``size_average`` and ``reduce``:
  a call whose 4th positional argument is an ``int`` (not a ``bool``) or whose 5th is a ``str``
  used the old order, and is read that way.
* ``LinearCrossEntropyLoss(class_weight=None, ignore_index=-100, ...)`` called as
  ``(hidden, weight, target, bias)`` is now torch's ``LinearCrossEntropyLoss(in_features,
  num_classes, ...)`` that owns its head; the headless form is kept when ``in_features`` is not
  an int.
* ``size_average`` / ``reduce`` themselves mean what they mean in torch (its legacy reduction
  rule), with torch's warning.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

from ..errors import InvalidTypeError

_NOT_GIVEN: Any = object()  # a keyword the caller did not pass (None is a value)


def _warn(message: str) -> None:
    # stacklevel 4: the user's line, past the loss function, its helper here and this one
    warnings.warn(message, DeprecationWarning, stacklevel=4)


def linear_ce_bias(positional: tuple, linear_bias, bias):
    """The projection's bias from torch's ``linear_bias=`` or an old 4th positional / ``bias=``."""
    if len(positional) > 1:
        raise InvalidTypeError(f"linear_cross_entropy takes 3 positional arguments (input, "
                               f"linear_weight, target), got {3 + len(positional)}; pass the "
                               f"others by keyword")
    old = positional[0] if positional else bias
    if positional and bias is not _NOT_GIVEN:
        raise InvalidTypeError("linear_cross_entropy got the bias twice (4th positional argument "
                               "and bias=); pass linear_bias= only")
    if old is _NOT_GIVEN:
        return linear_bias
    if linear_bias is not None:
        raise InvalidTypeError("linear_cross_entropy got both linear_bias= and the old bias "
                               "argument; pass linear_bias= only")
    _warn("linear_cross_entropy's bias is now the keyword linear_bias= (torch 2.13's name); "
          "the 4th positional argument and bias= will be removed in the next release")
    return old


def linear_ce_class_weight(weight, class_weight):
    """The per-class weights from torch's ``weight=`` or the old ``class_weight=``."""
    if class_weight is _NOT_GIVEN:
        return weight
    if weight is not None:
        raise InvalidTypeError("linear_cross_entropy got both weight= (the per-class weights, "
                               "torch's name) and the old class_weight=; pass weight= only")
    _warn("linear_cross_entropy's class_weight= is now weight= (torch 2.13's name for the "
          "per-class weights; the projection is linear_weight, the 2nd argument); class_weight= "
          "will be removed in the next release")
    return class_weight


def headless_linear_ce_module() -> None:
    warnings.warn("LinearCrossEntropyLoss now mirrors torch.nn.LinearCrossEntropyLoss"
                  "(in_features, num_classes, ...) and owns its head; the headless form "
                  "LinearCrossEntropyLoss(class_weight, ...)(hidden, weight, target, bias) will be "
                  "removed in the next release: call fastgd.linear_cross_entropy(hidden, weight, "
                  "target, ...) on a head the model owns", DeprecationWarning, stacklevel=3)


def cross_entropy_order(size_average, ignore_index, reduce, reduction, label_smoothing
                        ) -> tuple[Optional[bool], int, Optional[bool], str, float]:
    """``(size_average, ignore_index, reduce, reduction, label_smoothing)`` read in torch's
    positional order, or in fastgd's old one when the values say so (module docstring)."""
    old_order = ((isinstance(size_average, int) and not isinstance(size_average, bool))
                 or isinstance(ignore_index, str))
    if not old_order:
        return size_average, ignore_index, reduce, reduction, label_smoothing
    _warn("cross_entropy now takes torch's positional order (input, target, weight, "
          "size_average, ignore_index, reduce, reduction, label_smoothing); pass ignore_index=, "
          "reduction= and label_smoothing= by keyword. The old order (ignore_index 4th) will be "
          "read until the next release")
    # old: (weight, ignore_index, reduction, label_smoothing) in the slots of torch's
    # (weight, size_average, ignore_index, reduce)
    old_ignore_index, old_reduction, old_smoothing = size_average, ignore_index, reduce
    return (None, old_ignore_index if old_ignore_index is not None else -100, None,
            old_reduction if isinstance(old_reduction, str) else reduction,
            old_smoothing if isinstance(old_smoothing, (int, float)) and not isinstance(
                old_smoothing, bool) else label_smoothing)


def legacy_reduction(size_average, reduce, reduction: str) -> str:
    """torch's rule for its deprecated ``size_average`` / ``reduce`` (and its warning): either
    given, they decide the reduction; ``reduce=False`` means ``"none"``."""
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction

    return _reduction.legacy_get_string(size_average, reduce)  # warns as torch does
