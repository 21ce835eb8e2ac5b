"""Timers and ceilings.

On CUDA every time comes from ``triton.testing.do_bench``: CUDA events around each call, the L2
flushed before each timed call, and the 20th/50th/80th percentiles of at least
``MIN_SAMPLES`` calls. On the CPU a plain ``perf_counter`` loop gives the same percentiles.
The ceilings (device-copy bandwidth, bf16 matrix-product rate) are measured in the same process
as the cases they are compared with.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, NamedTuple

import torch

from . import traffic

QUANTILES = (0.2, 0.5, 0.8)
MIN_SAMPLES = 10
MAX_ROTATION = 16  # input sets; do_bench also flushes L2 before each timed call
FLUSH_MARGIN_MS = 0.5


class Timing(NamedTuple):
    """Milliseconds per call: 20th, 50th (median) and 80th percentile."""

    p20: float
    p50: float
    p80: float


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], device: str, rep_ms: float = 100.0) -> Timing:
    """Time ``fn`` (already called once, so compilation stays out of the numbers)."""
    if device == "cuda":
        return _time_cuda(fn, rep_ms)
    return _time_cpu(fn, rep_ms)


def _time_cuda(fn, rep_ms: float) -> Timing:
    from triton.testing import do_bench

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end), 1e-3)
    # do_bench sizes its loop from `rep` milliseconds of calls *and* L2 flushes (zeroing 256 MB,
    # well under FLUSH_MARGIN_MS on current GPUs): slow and tiny cases alike get MIN_SAMPLES.
    rep = max(rep_ms, MIN_SAMPLES * (estimate + FLUSH_MARGIN_MS))
    warmup = min(25.0, rep / 4)
    return Timing(*do_bench(fn, warmup=warmup, rep=rep, quantiles=list(QUANTILES)))


def _time_cpu(fn, rep_ms: float) -> Timing:
    for _ in range(2):  # warm caches and the allocator, as do_bench's warm-up does on CUDA
        fn()
    samples: list[float] = []
    budget_end = time.perf_counter() + rep_ms / 1e3
    while len(samples) < MIN_SAMPLES or (time.perf_counter() < budget_end and len(samples) < 1000):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return quantiles_of(samples)


def quantiles_of(samples: list[float]) -> Timing:
    """p20/p50/p80 of ``samples`` (linear interpolation, as numpy's default)."""
    if not samples:
        raise ValueError("quantiles_of([]): no samples")
    if len(samples) == 1:
        return Timing(samples[0], samples[0], samples[0])
    cuts = statistics.quantiles(samples, n=10, method="inclusive")  # deciles 10%..90%
    return Timing(cuts[1], statistics.median(samples), cuts[7])


def host_time_per_call(fn: Callable[[], object], device: str, calls: int = 20) -> Timing:
    """CPU time (``time.thread_time``) the calling thread spends inside ``fn``: the host overhead
    of launching its work. The device is drained after each call, outside the measured region,
    so a full launch queue never blocks a measured call."""
    samples = []
    for _ in range(calls):
        synchronize(device)
        t0 = time.thread_time()
        fn()
        samples.append((time.thread_time() - t0) * 1e3)
    synchronize(device)
    return quantiles_of(samples)


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int | None:
    """Most memory one call of ``fn`` holds beyond what was allocated before it (its inputs,
    saved tensors, optimizer state...): ``torch.cuda.max_memory_allocated``. None on the CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before)


def rotation_sets(set_bytes: int, l2_bytes: int) -> int:
    """How many input sets to cycle through so that consecutive calls do not find their inputs in
    the L2 cache: enough to cover twice the L2, at most MAX_ROTATION; 1 for large inputs."""
    if l2_bytes <= 0 or set_bytes >= l2_bytes:
        return 1
    return max(1, min(MAX_ROTATION, math.ceil(2 * l2_bytes / max(set_bytes, 1))))


def copy_bandwidth(device: str, nbytes: int | None = None, rep_ms: float = 100.0) -> tuple[float, Timing]:
    """Achieved GB/s (1e9 bytes/s, median) of ``dst.copy_(src)`` over ``nbytes`` per buffer:
    the practical ceiling of a memory-bound kernel on this device."""
    if nbytes is None:
        nbytes = (1 << 30) if device == "cuda" else (64 << 20)
    numel = nbytes // 4
    src = torch.rand(numel, device=device) + 0.5
    dst = torch.empty_like(src)
    dst.copy_(src)
    timing = time_calls(lambda: dst.copy_(src), device, rep_ms)
    return gbps(traffic.copy_bytes(numel, 4), timing.p50), timing


def matmul_tflops(device: str, size: int = 8192, rep_ms: float = 100.0) -> tuple[float, Timing]:
    """Achieved TFLOP/s (median) of a bf16 ``size``-cube matrix product on random data: the
    practical ceiling of an arithmetic-bound kernel. CUDA only."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    torch.matmul(a, b, out=out)
    timing = time_calls(lambda: torch.matmul(a, b, out=out), device, rep_ms)
    return tflops(2 * size ** 3, timing.p50), timing


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def tflops(flops: int, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12
