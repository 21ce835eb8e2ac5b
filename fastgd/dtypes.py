"""The dtype decisions shared by every op: the precision the math runs in, and how a torch dtype
is named to Triton (as a ``tl`` type for launches, as a type string for compile signatures)."""
from __future__ import annotations

import torch

# Triton's type string and ``triton.language`` name of each dtype a kernel argument may have
# ("*bf16" is a bfloat16 pointer in a compile signature).
_TRITON_NAMES = {
    torch.bfloat16: ("bf16", "bfloat16"),
    torch.float16: ("fp16", "float16"),
    torch.float32: ("fp32", "float32"),
    torch.float64: ("fp64", "float64"),
    torch.int32: ("i32", "int32"),
    torch.int64: ("i64", "int64"),
}
TRITON_TYPE_NAMES = {dtype: names[0] for dtype, names in _TRITON_NAMES.items()}
# The dtypes the kernels take as data (logits, parameters, gradients, optimizer states).
KERNEL_FLOAT_DTYPES = tuple(dtype for dtype in _TRITON_NAMES if dtype.is_floating_point)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the math (and of per-row results): float64 for float64 tensors, else
    float32 -- 16-bit values are upcast right after every load."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_dtype(dtype: torch.dtype):
    """``dtype`` as a ``triton.language`` type (imported here, on first use: ``import fastgd``
    must work without Triton)."""
    import triton.language as tl

    return getattr(tl, _TRITON_NAMES[dtype][1])


def triton_compute_dtype(dtype: torch.dtype):
    """:func:`compute_dtype` as a ``triton.language`` type (the kernels' ``COMPUTE``)."""
    return triton_dtype(compute_dtype(dtype))
