"""The per-row cross-entropy as torch library ops (so ``torch.compile`` can trace through them),
with their launchers. Everything about reductions lives in :mod:`fastgd.losses.cross_entropy`.

``fastgd::cross_entropy_rows(logits (N, C), target (N,), ...) -> (ce (N,), lse (N,))`` and its
backward ``fastgd::cross_entropy_rows_backward`` (a new gradient tensor) or
``fastgd::cross_entropy_rows_backward_`` (the gradient written over the logits). Each runs the
Triton kernels or the PyTorch path, as :mod:`fastgd.backend` decides.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, get_type_hints

import numpy as np
import torch
from torch import Tensor

from .. import backend, guard
from . import cross_entropy_torch as torch_path
from .transforms import refuse_second_derivative
from ..errors import InvalidTypeError, InvalidValueError, TargetOutOfBoundsError
from ..dtypes import compute_dtype, triton_compute_dtype
from ..kernel_call import KernelCall
from ..launch_config import cross_entropy_launch


def check_target_range(target: Tensor, n_classes: int, ignore_index: int) -> None:
    """Raise if a target is outside ``[0, n_classes)`` and not ``ignore_index`` (host tensors
    only: on a GPU this would be a host sync; the kernels make such a row NaN instead)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bad.any():
        value = target[bad][0].item()
        raise TargetOutOfBoundsError(f"Target {value} is out of bounds: outside [0, {n_classes}) "
                                     f"and not ignore_index={ignore_index}")


class RowOptions(NamedTuple):
    """The options of the row ops, as the kernels and the PyTorch path read them."""

    ignore_index: int
    label_smoothing: float
    logit_scale: float
    softcap: float  # <= 0: no soft cap


class ClassSlice(NamedTuple):
    """Which classes a tensor of logits holds: ``[offset, offset + C_local)`` of ``total`` -- one
    rank's slice of a vocabulary-parallel row. ``None`` where they are all the classes."""

    offset: int
    total: int


def _class_slice(logits, classes: Optional[ClassSlice]) -> ClassSlice:
    return classes if classes is not None else ClassSlice(0, logits.shape[1])


# --------------------------------------------------------------------------- Triton launchers
def check_row_operands(logits, target, weight, *, lse=None, grad_ce=None, grad_lse=None,
                       grad=None, classes: Optional[ClassSlice] = None) -> None:
    """The launch guard of the row kernels (:mod:`fastgd.guard`): every pointer belongs to a
    tensor of the shape, dtype, device and layout the kernel assumes -- also when the ops are
    called directly as ``torch.ops.fastgd.*`` rather than through :func:`fastgd.cross_entropy`,
    which prepares them so."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise InvalidValueError("logits must be an (N, C) tensor")
    n_rows, n_classes = logits.shape
    device, compute = logits.device, compute_dtype(logits.dtype)
    guard.require_tensor(logits, "logits", device=device)
    if target.dtype not in (torch.int32, torch.int64):
        raise InvalidTypeError(f"target has dtype {target.dtype}; the row kernels read int32 or "
                               f"int64 class indices")
    guard.require_tensor(target, "target", device=device, shape=(n_rows,), contiguous=True)
    classes = _class_slice(logits, classes)
    if not 0 <= classes.offset <= classes.offset + n_classes <= classes.total:
        raise InvalidValueError(f"logits hold classes [{classes.offset}, {classes.offset} + "
                                f"{n_classes}), not inside the {classes.total} classes")
    if weight is not None:  # the weights of every class, also for a slice of them
        guard.require_tensor(weight, "weight", dtype=compute, device=device,
                             shape=(classes.total,), contiguous=True)
    for what, vector in (("lse", lse), ("grad_ce", grad_ce), ("grad_lse", grad_lse)):
        if vector is not None:
            guard.require_tensor(vector, what, dtype=compute, device=device, shape=(n_rows,),
                                 contiguous=True)
    if grad is not None:
        guard.require_tensor(grad, "the gradient output", dtype=logits.dtype, device=device,
                             shape=(n_rows, n_classes), writable=True)


def _shared_args(logits, target, weight, unused, options: RowOptions) -> dict:
    """The arguments both row kernels take alike, by parameter name; without weights, the two
    weight pointers get ``unused`` (any valid pointer: the kernel never reads it)."""
    block, _ = cross_entropy_launch(logits.shape[1], logits.dtype)
    weight_sum = weight.sum() if weight is not None else unused
    args = dict(
        logits_ptr=logits, stride_row=logits.stride(0), stride_col=logits.stride(1),
        target_ptr=target, weight_ptr=weight if weight is not None else weight_sum,
        weight_sum_ptr=weight_sum, n_classes=logits.shape[1],
        ignore_index=options.ignore_index,
        HAS_WEIGHT=weight is not None, HAS_SMOOTHING=options.label_smoothing > 0,
        HAS_SOFTCAP=options.softcap > 0, COMPUTE=triton_compute_dtype(logits.dtype),
        BLOCK_V=block,
    )
    # The float options as exact (hi, lo) pairs of fp32 values (see kernels.common.float_arg).
    for name, value in (("label_smoothing", options.label_smoothing),
                        ("logit_scale", options.logit_scale),
                        ("softcap", options.softcap if options.softcap > 0 else 1.0)):
        hi = float(np.float32(value))
        args[f"{name}_hi"], args[f"{name}_lo"] = hi, float(np.float32(value - hi))
    return args


def forward_call(logits, target, weight, ce, lse, options: RowOptions) -> KernelCall:
    """The forward kernel's launch: one program per row, writing ``ce`` and ``lse``."""
    from ..kernels.cross_entropy import cross_entropy_forward_kernel

    _, num_warps = cross_entropy_launch(logits.shape[1], logits.dtype)
    return KernelCall(cross_entropy_forward_kernel, (logits.shape[0],),
                      dict(_shared_args(logits, target, weight, ce, options),
                           ce_ptr=ce, lse_ptr=lse), num_warps)


def shard_forward_call(logits, target, weight, lse, target_z, weighted_z,
                       options: RowOptions, classes: ClassSlice) -> KernelCall:
    """The vocabulary-parallel forward kernel's launch: one program per row of this rank's
    slice, writing its parts ``lse_r``, ``zt_r`` and ``wz_r``."""
    from ..kernels.cross_entropy import cross_entropy_shard_forward_kernel

    _, num_warps = cross_entropy_launch(logits.shape[1], logits.dtype)
    shared = _shared_args(logits, target, weight, lse, options)
    args = {name: shared[name] for name in (
        "logits_ptr", "stride_row", "stride_col", "target_ptr", "weight_ptr", "n_classes",
        "logit_scale_hi", "logit_scale_lo", "softcap_hi", "softcap_lo", "HAS_WEIGHT",
        "HAS_SMOOTHING", "HAS_SOFTCAP", "COMPUTE", "BLOCK_V")}
    return KernelCall(cross_entropy_shard_forward_kernel, (logits.shape[0],),
                      dict(args, lse_ptr=lse, target_z_ptr=target_z, weighted_z_ptr=weighted_z,
                           class_offset=classes.offset), num_warps)


def backward_call(grad, logits, target, weight, lse, grad_ce, grad_lse,
                  options: RowOptions, classes: Optional[ClassSlice] = None) -> KernelCall:
    """The backward kernel's launch: one program per row, writing ``grad``."""
    from ..kernels.cross_entropy import cross_entropy_backward_kernel

    _, num_warps = cross_entropy_launch(logits.shape[1], logits.dtype)
    classes = _class_slice(logits, classes)
    return KernelCall(cross_entropy_backward_kernel, (logits.shape[0],),
                      dict(_shared_args(logits, target, weight, lse, options),
                           class_offset=classes.offset, total_classes=classes.total,
                           grad_ptr=grad, grad_stride_row=grad.stride(0),
                           grad_stride_col=grad.stride(1), lse_ptr=lse, grad_ce_ptr=grad_ce,
                           grad_lse_ptr=grad_lse if grad_lse is not None else lse,
                           HAS_GRAD_LSE=grad_lse is not None), num_warps)


def _launch_forward(logits, target, weight, options: RowOptions):
    n_rows = logits.shape[0]
    ce = torch.empty(n_rows, dtype=compute_dtype(logits.dtype), device=logits.device)
    lse = torch.empty_like(ce)
    if n_rows == 0:
        return ce, lse
    with backend.launch_device(logits):
        forward_call(logits, target, weight, ce, lse, options).launch()
    return ce, lse


def _launch_backward(grad, logits, target, weight, lse, grad_ce, grad_lse, options: RowOptions,
                     classes: Optional[ClassSlice]):
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return
    with backend.launch_device(logits):
        backward_call(grad, logits, target, weight, lse, grad_ce, grad_lse, options,
                      classes).launch()


def _launch_shard_forward(logits, target, weight, options: RowOptions, classes: ClassSlice):
    lse, target_z, weighted_z = (
        torch.empty(logits.shape[0], dtype=compute_dtype(logits.dtype), device=logits.device)
        for _ in range(3))
    if logits.shape[0] == 0:
        return lse, target_z, weighted_z
    with backend.launch_device(logits):
        shard_forward_call(logits, target, weight, lse, target_z, weighted_z, options,
                           classes).launch()
    return lse, target_z, weighted_z


# --------------------------------------------------------------------------- dispatch
def rows_forward(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                 options: RowOptions) -> tuple[Tensor, Tensor]:
    """Per-row ``(ce, lse)`` of ``(N, C)`` logits: the kernels or the PyTorch path, as
    :mod:`fastgd.backend` decides, after the same checks on both."""
    check_row_operands(logits, target, weight)
    if backend.uses_kernels(logits):
        return _launch_forward(logits, target, weight, options)
    return torch_path.rows_forward(logits, target, weight, options)


def rows_backward_into(grad: Tensor, logits: Tensor, target: Tensor, weight: Optional[Tensor],
                       lse: Tensor, grad_ce: Tensor, grad_lse: Optional[Tensor],
                       options: RowOptions, classes: Optional[ClassSlice] = None) -> None:
    """Write ``d loss / d logits`` into ``grad`` (which may be ``logits`` itself). For a slice of
    the classes (``classes``), ``lse`` is the whole row's and ``weight`` every class's."""
    check_row_operands(logits, target, weight, lse=lse, grad_ce=grad_ce, grad_lse=grad_lse,
                       grad=grad, classes=classes)
    if backend.uses_kernels(logits):
        _launch_backward(grad, logits, target, weight, lse, grad_ce, grad_lse, options, classes)
    elif logits.shape[1] > 0:
        classes = _class_slice(logits, classes)
        if grad is logits and torch_path.rows_backward_in_place(
                logits, target, weight, lse, grad_ce, grad_lse, options, classes):
            return
        grad.copy_(torch_path.rows_backward(logits, target, weight, lse, grad_ce, grad_lse,
                                            options, classes))


def shard_rows_forward(logits: Tensor, target: Tensor, weight: Optional[Tensor],
                       options: RowOptions, classes: ClassSlice) -> tuple[Tensor, Tensor, Tensor]:
    """This rank's parts ``(lse_r, zt_r, wz_r)`` of a vocabulary-parallel row (formulas in
    ``fastgd/kernels/cross_entropy.py``); a slice of no classes has ``lse_r = -inf``."""
    check_row_operands(logits, target, weight, classes=classes)
    if logits.shape[1] == 0:  # an empty slice (uneven sharding): nothing to read
        zeros = logits.new_zeros(logits.shape[0], dtype=compute_dtype(logits.dtype))
        return torch.full_like(zeros, float("-inf")), zeros, zeros.clone()
    if backend.uses_kernels(logits):
        return _launch_shard_forward(logits, target, weight, options, classes)
    return torch_path.shard_rows_forward(logits, target, weight, options, classes)


# --------------------------------------------------------------------------- library ops
# The ops' schemas are written as strings so that the row options are declared once, by
# RowOptions (whose annotations are schema types), for the ops of both losses.
ROW_OPTIONS_SCHEMA = ", ".join(f"{kind.__name__} {name}"
                               for name, kind in get_type_hints(RowOptions).items())
_BACKWARD_OPERANDS = "Tensor target, Tensor? weight, Tensor lse, Tensor grad_ce, Tensor? grad_lse"


@torch.library.custom_op(
    "fastgd::cross_entropy_rows", mutates_args=(),
    schema=f"(Tensor logits, Tensor target, Tensor? weight, {ROW_OPTIONS_SCHEMA}, "
           f"bool inplace_backward) -> (Tensor, Tensor)")
def cross_entropy_rows(logits, target, weight, ignore_index, label_smoothing, logit_scale,
                       softcap, inplace_backward):
    """Per-row ``(ce, lse)``; ``softcap <= 0`` means no soft cap. ``inplace_backward`` only
    tells the backward where to write."""
    if backend.can_check_on_host(target):  # inside the op: eager, and opaque to torch.compile
        check_target_range(target, logits.shape[1], ignore_index)
    return rows_forward(logits, target, weight,
                        RowOptions(ignore_index, label_smoothing, logit_scale, softcap))


@cross_entropy_rows.register_fake
def _(logits, target, weight, *options_and_inplace):
    ce = logits.new_empty(logits.shape[0], dtype=compute_dtype(logits.dtype))
    return ce, torch.empty_like(ce)


@torch.library.custom_op(
    "fastgd::cross_entropy_rows_backward", mutates_args=(),
    schema=f"(Tensor logits, {_BACKWARD_OPERANDS}, {ROW_OPTIONS_SCHEMA}) -> Tensor")
def cross_entropy_rows_backward(logits, target, weight, lse, grad_ce, grad_lse, *options):
    """``d loss / d logits`` as a new tensor; ``options`` are the fields of :class:`RowOptions`
    in its order (the schema's)."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    rows_backward_into(grad, logits, target, weight, lse, grad_ce, grad_lse, RowOptions(*options))
    return grad


@cross_entropy_rows_backward.register_fake
def _(logits, *operands_and_options):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op(
    "fastgd::cross_entropy_rows_backward_", mutates_args=("logits",),
    schema=f"(Tensor(a!) logits, {_BACKWARD_OPERANDS}, {ROW_OPTIONS_SCHEMA}) -> ()")
def cross_entropy_rows_backward_(logits, target, weight, lse, grad_ce, grad_lse, *options):
    """As ``cross_entropy_rows_backward``, writing the gradient over ``logits``."""
    rows_backward_into(logits, logits, target, weight, lse, grad_ce, grad_lse,
                       RowOptions(*options))


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, logit_scale, softcap, inplace = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.options = RowOptions(ignore_index, label_smoothing, logit_scale, softcap)
    ctx.inplace = inplace
    ctx.n_inputs = len(inputs)
    # An unused output's gradient stays None (not zeros): the backward then skips ignored rows.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_ce, grad_lse):
    logits, target, weight, lse = ctx.saved_tensors
    if grad_ce is None:
        grad_ce = torch.zeros_like(lse)
    grad_ce = grad_ce.contiguous()  # a grad from .sum().backward() has stride 0
    grad_lse = grad_lse.contiguous() if grad_lse is not None else None
    args = (target, weight, lse, grad_ce, grad_lse, *ctx.options)
    if ctx.inplace:
        cross_entropy_rows_backward_(logits, *args)
        grad = logits
    else:
        grad = cross_entropy_rows_backward(logits, *args)
    return (grad,) + (None,) * (ctx.n_inputs - 1)  # only the logits are differentiable


cross_entropy_rows.register_autograd(_backward, setup_context=_setup_context)
refuse_second_derivative(cross_entropy_rows_backward, "fastgd.cross_entropy")
