"""Every block-size and warp-count rule of fastgd, in one place.

The rules are deliberately simple and deterministic (no autotuning: the interpreter cannot
autotune, and a rule here is something a reviewer can reason about).
"""
from __future__ import annotations

import torch

# Cross-entropy: one program per row, looping over the vocabulary in BLOCK_V-wide tiles.
# 8 KiB (bf16/fp16) or 16 KiB (fp32) per tile keeps every thread issuing 128-bit loads with
# 8 warps (16 elements per thread) while staying far from register spills; fp64 tiles are halved
# so a thread holds the same number of bytes.
CE_MAX_BLOCK = {torch.float16: 4096, torch.bfloat16: 4096, torch.float32: 4096, torch.float64: 2048}
CE_ELEMENTS_PER_THREAD = 16


def cross_entropy_launch(n_classes: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for a cross-entropy row kernel over ``n_classes`` classes."""
    block = min(_next_power_of_2(n_classes), CE_MAX_BLOCK[dtype])
    block = max(block, 16)  # tl.arange needs at least 16 lanes for sensible layouts
    num_warps = max(1, min(8, block // (32 * CE_ELEMENTS_PER_THREAD)))
    return block, num_warps


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
