"""The dtype decisions shared by every op: the precision the math runs in, and how a torch dtype
is named to Triton (as a ``tl`` type for launches, as a type string for compile specs)."""
from __future__ import annotations

import torch

# Triton's type strings ("*bf16" is a bfloat16 pointer in a compile signature).
TRITON_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32",
                     torch.float64: "fp64"}
KERNEL_FLOAT_DTYPES = tuple(TRITON_TYPE_NAMES)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the math (and of per-row results): float64 for float64 tensors, else
    float32 -- 16-bit values are upcast right after every load."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_dtype(dtype: torch.dtype):
    """``dtype`` as a ``triton.language`` type (imported here, on first use: ``import fastgd``
    must work without Triton)."""
    import triton.language as tl

    return getattr(tl, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
                        "fp64": "float64"}[TRITON_TYPE_NAMES[dtype]])


def triton_compute_dtype(dtype: torch.dtype):
    """:func:`compute_dtype` as a ``triton.language`` type (the kernels' ``COMPUTE``)."""
    return triton_dtype(compute_dtype(dtype))
