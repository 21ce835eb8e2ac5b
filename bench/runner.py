"""Runs cases one at a time: build, first call (compilation, lazy state), peak memory, timing,
host time; a case that cannot run is recorded with its reason and the run goes on. The results
folder is rewritten after every case, so a run stopped by a time limit still leaves its table."""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from . import folder, timing, traffic
from .case import Case, Skipped, Unavailable, prepare
from .results import Ceilings, Measurement, ResultSet, case_rows, ceiling_row
from .table import format_number

# A torch.compile case is started only with this much of the time budget left: its first call
# compiles the forward and backward graphs (tens of seconds on a cold process).
COMPILE_ALLOWANCE_S = 40.0


def measure_ceilings(results: ResultSet, need_matmul: bool, rep_ms: float,
                     log: Callable[[str], None]) -> None:
    """Device-copy bandwidth (and, for compute-bound cases on a GPU, the bf16 matrix-product
    rate), measured now, in the process whose cases they are compared with."""
    device, m = results.machine.device, results.machine
    nbytes = (1 << 30) if device == "cuda" else (64 << 20)
    copy, t = timing.copy_bandwidth(device, nbytes, rep_ms)
    results.ceilings = Ceilings(copy_gbps=copy)
    moved = traffic.copy_bytes(nbytes // 4, 4)
    results.rows.append(ceiling_row(
        "device copy", "bandwidth", tuple(moved / (ms * 1e-3) / 1e9 for ms in (t.p80, t.p50, t.p20)),
        moved, 0, f"{nbytes >> 20} MiB fp32", m))
    log(f"device copy: {copy:,.0f} GB/s (median; {nbytes >> 20} MiB read + written)")
    if need_matmul and device == "cuda":
        size = 8192
        rate, t = timing.matmul_tflops(device, size, rep_ms)
        results.ceilings.matmul_tflops = rate
        flops = 2 * size ** 3
        results.rows.append(ceiling_row(
            "bf16 matmul", "tflops", tuple(flops / (ms * 1e-3) / 1e12 for ms in (t.p80, t.p50, t.p20)),
            0, flops, f"{size}x{size}x{size}", m))
        log(f"bf16 matrix product: {rate:,.0f} TFLOP/s (median; {size}^3, random data)")
    _free()


def run(items: list, results: ResultSet, out: Optional[Path], rep_ms: float,
        budget_s: Optional[float], log: Callable[[str], None]) -> ResultSet:
    """Measure every :class:`Case` in ``items`` (torch.compile ones last: their first call
    compiles for a long time), record every :class:`Skipped`, write ``out`` after each case."""
    started = time.monotonic()
    cases = [c for c in items if isinstance(c, Case)]
    cases = [c for c in cases if not c.compiles] + [c for c in cases if c.compiles]
    results.skipped += [{"name": s.name, "reason": s.reason} for s in items if isinstance(s, Skipped)]
    for case in cases:
        needed = COMPILE_ALLOWANCE_S if case.compiles else 0.0
        if budget_s is not None and time.monotonic() - started + needed > budget_s:
            results.skipped.append({"name": case.name,
                                    "reason": f"the run's time budget ({budget_s:.0f} s) was spent"})
            continue
        try:
            m = measure(case, rep_ms)
        except Unavailable as e:
            results.skipped.append({"name": case.name, "reason": str(e)})
            log(f"{case.name}: not measured ({e})")
        except Exception as e:  # an error in one provider must not lose the others' figures
            reason = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            results.skipped.append({"name": case.name, "reason": reason})
            log(f"{case.name}: {reason}")
            e.__traceback__ = None  # drop frames that hold the case's tensors
        else:
            rows = case_rows(case, m, results.ceilings, results.machine)
            results.rows += rows
            log(summary(case, m, rows))
        finally:
            _free()
        if out is not None:
            folder.write(results, out, plots=False)
    return results


def measure(case: Case, rep_ms: float) -> Measurement:
    fn = prepare(case)
    started = time.perf_counter()
    fn()  # compilation, autotuning and lazily created state stay out of the numbers
    timing.synchronize(case.device)
    first_call_s = time.perf_counter() - started
    peak = timing.peak_extra_bytes(fn, case.device)
    t = timing.time_calls(fn, case.device, rep_ms)
    host = timing.host_time_per_call(fn, case.device) if case.host_overhead else None
    return Measurement(time=t, peak_bytes=peak, host_time=host, first_call_s=first_call_s)


def summary(case: Case, m: Measurement, rows) -> str:
    by_metric = {r.metric: r for r in rows}
    parts = [f"{case.kernel} {case.mode} {case.dtype} {case.shape} | {case.provider:14}",
             f"{format_number(by_metric['time'].p50)} ms"]
    for metric, unit in (("bandwidth", "GB/s"), ("copy_pct", "% copy"), ("tflops", "TFLOP/s"),
                         ("matmul_pct", "% matmul"), ("peak_memory", "MiB peak"),
                         ("host_time", "ms CPU")):
        if metric in by_metric:
            parts.append(f"{format_number(by_metric[metric].p50)} {unit}")
    if m.first_call_s > 1.0:
        parts.append(f"(first call {m.first_call_s:.1f} s: compilation, set-up)")
    return "  ".join(parts)


def _free() -> None:
    """Give the last case's memory back before the next one allocates (GPU cases hold up to tens
    of GB). A full collection takes ~0.2 s, so only where memory is scarce."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
