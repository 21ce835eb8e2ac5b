"""The markdown report: one table per kernel and mode, one line per (dtype, shape, provider), and
the machine, command and measured ceilings above them so every number can be traced."""
from __future__ import annotations

from collections import OrderedDict

from .results import CEILING, ResultSet, Row
from .suites import BASELINES

HOW_TO_READ = """\
How to read: *median* is the median time of one call (*p20-p80*: the 20th to 80th percentile of
the timed calls; CUDA events through `triton.testing.do_bench`, L2 flushed before each call).
*must move* is the least traffic the operation needs (each input read once, each output written
once; `bench/traffic.py`); *GB/s* is that over the median time, whatever the provider really
moves, and *% of copy* compares it with a plain device copy measured in the same run. Arithmetic-
bound cases (the LM head) show *TFLOP/s* and *% of matmul* (a bf16 matrix product measured in the
same run) instead. *peak MiB*: most memory one call holds beyond its inputs
(`torch.cuda.max_memory_allocated`). *CPU ms*: the host's CPU time per call (launch overhead).
*vs baseline*: the baseline's median over this one (above 1: faster)."""

NO_GPU = """\
**No GPU in this run.** The times below are CPU times of fastgd's PyTorch path (the code fastgd
runs where Triton cannot) beside torch on the same CPU, at small sizes. They say nothing about
the Triton kernels, which only run compiled on a GPU; for what the compiler makes of them without
a GPU see the static report (`static_sm90.md`)."""

# column title -> (metric, which quantile)
COLUMNS = OrderedDict([
    ("median ms", ("time", "p50")),
    ("p20-p80 ms", ("time", "range")),
    ("GB/s", ("bandwidth", "p50")),
    ("% of copy", ("copy_pct", "p50")),
    ("TFLOP/s", ("tflops", "p50")),
    ("% of matmul", ("matmul_pct", "p50")),
    ("peak MiB", ("peak_memory", "p50")),
    ("CPU ms", ("host_time", "p50")),
])


def render(results: ResultSet) -> str:
    m = results.machine
    lines = ["# fastgd benchmarks", ""]
    device = m.gpu if m.has_gpu else "CPU only (no GPU)"
    lines.append(f"- device: {device}; torch {m.torch}, triton {m.triton}, Python {m.python}")
    lines.append(f"- commit {m.commit}, {m.date}; size preset `{results.size}`")
    lines.append(f"- command: `{results.command}`")
    lines.append(f"- ceilings measured in this run: {_ceilings(results)}")
    lines.append("")
    if not m.has_gpu:
        lines += [NO_GPU, ""]
    lines += [HOW_TO_READ, ""]
    for note in results.notes:
        lines += [f"> {note}", ""]
    for (kernel, mode), rows in _sections(results.rows).items():
        lines += _section(kernel, mode, rows)
    if results.skipped:
        lines += ["## Not measured", ""]
        lines += [f"- {s['name']}: {s['reason']}" for s in results.skipped]
        lines.append("")
    return "\n".join(lines)


def _ceilings(results: ResultSet) -> str:
    c = results.ceilings
    parts = []
    if c.copy_gbps:
        parts.append(f"device copy {c.copy_gbps:,.0f} GB/s (read + write)")
    if c.matmul_tflops:
        parts.append(f"bf16 matrix product {c.matmul_tflops:,.0f} TFLOP/s")
    return "; ".join(parts) or "none"


def _sections(rows: list[Row]) -> "OrderedDict[tuple, list[Row]]":
    sections: OrderedDict = OrderedDict()
    for r in rows:
        if r.kernel != CEILING:
            sections.setdefault((r.kernel, r.mode), []).append(r)
    return sections


def _section(kernel: str, mode: str, rows: list[Row]) -> list[str]:
    baseline = BASELINES.get(kernel)
    cases: OrderedDict = OrderedDict()  # (dtype, shape, provider) -> {metric: Row}
    for r in rows:
        cases.setdefault((r.dtype, r.shape, r.provider), {})[r.metric] = r
    present = {metric for metrics in cases.values() for metric in metrics}
    columns = [title for title, (metric, _) in COLUMNS.items() if metric in present]
    compute_bound = "tflops" in present
    header = ["dtype", "shape", "must do" if compute_bound else "must move", "provider", *columns]
    if baseline:
        header.append(f"vs {baseline}")
    out = [f"## {kernel} · {mode}", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    for (dtype, shape, provider), metrics in cases.items():
        first = next(iter(metrics.values()))
        amount = format_flops(first.flops) if compute_bound else format_bytes(first.bytes)
        cells = [dtype, shape, amount, provider]
        for title in columns:
            metric, which = COLUMNS[title]
            r = metrics.get(metric)
            if r is None:
                cells.append("")
            elif which == "range":
                cells.append(f"{format_number(r.p20)}-{format_number(r.p80)}")
            else:
                cells.append(format_number(r.p50))
        if baseline:
            cells.append(_speedup(cases, dtype, shape, provider, baseline))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def _speedup(cases, dtype, shape, provider, baseline) -> str:
    if provider == baseline:
        return "baseline"
    base = cases.get((dtype, shape, baseline), {}).get("time")
    this = cases.get((dtype, shape, provider), {}).get("time")
    if base is None or this is None or this.p50 <= 0:
        return ""
    return f"{base.p50 / this.p50:.2f}x"


def format_number(v: float) -> str:
    """Three significant figures, no exponent for the ranges benchmarks produce."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{format_number(n / scale)} {unit}"
    return f"{n:.0f} B"


def format_flops(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{format_number(n / scale)} {unit}"
    return f"{n:.0f} FLOP"
