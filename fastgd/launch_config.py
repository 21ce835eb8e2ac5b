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


# Linear cross-entropy: how many token rows of logits one chunk holds.
# The chunk's working set (its logits, turned into their gradient in place, plus whatever
# chunk-sized temporaries the path makes: see linear_cross_entropy_ops._bytes_per_logit) is kept
# under a fixed budget, so peak extra memory never grows with N. 1 GiB because on the GPU the
# d_weight accumulator (V x H fp32) is read and written once per chunk: for V=128256, H=4096
# that is 4.2 GB of traffic (~1 ms at 4.3 TB/s) against 2*rows*V*H FLOPs of the chunk's matmul
# (~1.4 ms per 1024 rows at ~790 TFLOP/s), so the chunk needs thousands of rows for the matmuls
# to dominate; 1 GiB of bf16 logits is 4096 rows at V=128256. Rows are a power of two (matmul
# tiles divide them) and chosen from shapes only: no host sync.
LCE_CHUNK_BUDGET_BYTES = 1 << 30
# The PyTorch path (a CPU without the interpreter) has no accumulator traffic to amortise of that
# size, and torch 2.13's own chunked F.linear_cross_entropy sets the bar there: +16 MiB above the
# inputs at N=8192, V=32768, H=64 fp32 (python -m bench.linear_ce_memory). A 16 MiB budget keeps
# fastgd at or under it (+11 MiB measured at 32 rows). At least 32 rows all the same: each chunk's
# matmul reads all of the V x H weight, and fewer rows make it memory-bound (2 * rows FLOPs per
# 4-byte weight element read: ~rows / 2 FLOP/byte).
LCE_TORCH_PATH_CHUNK_BUDGET_BYTES = 16 << 20
LCE_TORCH_PATH_MIN_ROWS = 32


def linear_cross_entropy_chunk(n_rows: int, n_classes: int, bytes_per_logit: int,
                               torch_path: bool = False) -> int:
    """Token rows per chunk: the largest power of two whose working set fits the budget of the
    path (the kernels' or the PyTorch path's), at least 1 (``LCE_TORCH_PATH_MIN_ROWS`` on the
    PyTorch path) and at most ``n_rows``."""
    budget = LCE_TORCH_PATH_CHUNK_BUDGET_BYTES if torch_path else LCE_CHUNK_BUDGET_BYTES
    fit = max(1, budget // max(1, n_classes * bytes_per_logit))
    rows = 1 << (fit.bit_length() - 1)  # largest power of two <= fit
    if torch_path:
        rows = max(rows, LCE_TORCH_PATH_MIN_ROWS)
    return max(1, min(rows, n_rows))


# Adam/AdamW (kernels/adam.py): one program per BLOCK elements of one tensor, 8 warps, 8 elements
# per thread: one (bf16/fp16) or two (fp32) 128-bit accesses per stream and thread, ~64-80
# registers (3 programs per SM on sm_80/sm_90, ~100 KB of loads in flight per SM). 16 elements
# per thread reached 128 registers and a stack frame in the sm_80/sm_90 compile (python -m
# bench.static). A tensor's tail wastes at most one block. Not tuned on a GPU yet. The norm's final
# reduction (one program, over one float64 partial per block) reads REDUCE_BLOCK at a time.
ADAM_BLOCK = {torch.float16: 2048, torch.bfloat16: 2048, torch.float32: 2048, torch.float64: 2048}
ADAM_NUM_WARPS = 8
ADAM_NORM_REDUCE_BLOCK = 1024


def adam_launch(dtype: torch.dtype) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for the multi-tensor Adam and gradient-norm kernels."""
    return ADAM_BLOCK[dtype], ADAM_NUM_WARPS
