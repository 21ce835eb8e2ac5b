"""The one check every kernel launch goes through: each pointer a kernel receives belongs to a
real, materialised tensor of the expected shape, dtype, device and layout, and the tensor's
storage covers every element the kernel may touch.

A kernel trusts its arguments completely (an address and a size are all it sees), so anything
wrong here -- a state tensor smaller than its parameter, a gradient in another dtype, a tensor
subclass without memory of its own, storage freed behind the tensor's back -- would become an
out-of-bounds read or write on the device. The checks read metadata only (no device sync) and
raise :class:`fastgd.errors.InvalidValueError` / ``InvalidTypeError`` naming the argument and
the fix.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch
from torch import Tensor

from .errors import InvalidTypeError, InvalidValueError


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor``. Until that module is imported no
    DTensor can exist, so it is looked up in ``sys.modules`` rather than imported here (an
    import would cost every ``import fastgd``; a cache would be state)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def require_tensor(
    t,
    what: str,
    *,
    dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
    shape: Optional[Sequence[int]] = None,
    strides: Optional[Sequence[int]] = None,
    contiguous: bool = False,
    writable: bool = False,
    fix: str = "",
) -> Tensor:
    """Check that ``t`` may be handed to a kernel as ``what``; returns ``t``.

    ``strides``: the exact element strides the kernel assumes (e.g. its parameter's);
    ``contiguous``: row-major without gaps; ``writable``: the kernel writes through it, so no two
    elements may share memory (an expanded, stride-0 tensor would race with itself)."""
    hint = f"; {fix}" if fix else ""
    if not isinstance(t, Tensor):
        raise InvalidTypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}{hint}")
    if type(t).__torch_dispatch__ is not Tensor.__torch_dispatch__:
        # A DTensor and its like wrap other tensors: their own address is 0 or someone else's.
        raise InvalidTypeError(
            f"{what} is a {type(t).__name__}, a tensor subclass that does not own its memory; "
            f"the kernels take plain tensors (for a DTensor, its local shard: .to_local()){hint}")
    if t.layout != torch.strided:
        raise InvalidTypeError(f"{what} has layout {t.layout}; the kernels need a dense (strided) "
                               f"tensor{hint}")
    if dtype is not None and t.dtype != dtype:
        raise InvalidTypeError(f"{what} has dtype {t.dtype}, expected {dtype}{hint}")
    if device is not None and t.device != torch.device(device):
        raise InvalidValueError(f"{what} is on {t.device}, expected {device}{hint}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise InvalidValueError(f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)}"
                                f"{hint}")
    if strides is not None and t.numel() > 1 and tuple(t.stride()) != tuple(strides):
        raise InvalidValueError(f"{what} has strides {t.stride()}, expected {tuple(strides)} "
                                f"(the layout the kernel assumes){hint}")
    if contiguous and not t.is_contiguous():
        raise InvalidValueError(f"{what} must be contiguous{hint or '; pass .contiguous()'}")
    if writable and has_internal_overlap(t):
        raise InvalidValueError(f"{what} has elements that share memory (strides {t.stride()}, "
                                f"e.g. an expanded tensor) and cannot be written in place{hint}")
    _require_memory(t, what, hint)
    return t


def require_like(t, reference: Tensor, what: str, fix: str = "") -> Tensor:
    """The per-step part of the optimizer's checks: ``t`` has ``reference``'s shape, dtype and
    device (attribute compares only; the full :func:`require_tensor` runs when a table is
    built)."""
    if not isinstance(t, Tensor):
        raise InvalidTypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}"
                               f"{'; ' + fix if fix else ''}")
    if t.shape != reference.shape or t.dtype != reference.dtype or t.device != reference.device:
        raise InvalidValueError(
            f"{what} is {_describe(t)} but its parameter is {_describe(reference)}"
            f"{'; ' + fix if fix else ''}")
    return t


def has_internal_overlap(t: Tensor) -> bool:
    """True when two elements of ``t`` may share an address (conservative: strides sorted
    ascending must each step past everything the smaller ones span)."""
    if t.numel() == 0:
        return False
    span = 0  # elements covered by the dimensions seen so far, minus one
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s > 1):
        if stride <= span:
            return True
        span += (size - 1) * stride
    return False


def _require_memory(t: Tensor, what: str, hint: str) -> None:
    """``t`` owns real memory covering all its elements: not meta, not a wrapper subclass whose
    address is 0, storage not freed or shrunk behind the tensor's back."""
    if t.device.type == "meta":
        raise InvalidValueError(f"{what} is on the meta device (it has no memory){hint}")
    if t.numel() == 0:
        return
    try:
        address = t.data_ptr()
        storage_bytes = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        raise InvalidTypeError(
            f"{what} ({type(t).__name__}) has no memory of its own ({exc}); pass a plain "
            f"tensor, e.g. the local shard of a DTensor (.to_local()){hint}") from exc
    if address == 0:
        raise InvalidTypeError(f"{what} ({type(t).__name__}) has no memory (address 0: a tensor "
                               f"subclass without storage of its own, or storage freed with "
                               f"resize_(0)){hint}")
    last = t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    if (last + 1) * t.element_size() > storage_bytes:
        raise InvalidValueError(
            f"{what} reaches byte {(last + 1) * t.element_size()} of a storage of "
            f"{storage_bytes} bytes (storage freed or resized after the tensor was made){hint}")


def _describe(t: Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"
