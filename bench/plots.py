"""PNG plots of time and achieved rate against size, one line per provider, one figure per
kernel x mode x dtype. matplotlib is imported here only: nothing else in fastgd needs it."""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

from .results import CEILING, Row


def write(rows: list[Row], out: Path, notes: list[str]) -> list[Path]:
    """One PNG per (kernel, mode, dtype) into ``out``; returns the files. Without matplotlib,
    adds a note saying so and writes nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("No plots: matplotlib is not installed (pip install matplotlib).")
        return []
    written = []
    for (kernel, mode, dtype), group in _figures(rows).items():
        rate_metric = "tflops" if any(r.metric == "tflops" for r in group) else "bandwidth"
        fig, (ax_time, ax_rate) = plt.subplots(1, 2, figsize=(11, 4.2))
        for provider, series in _by_provider(group).items():
            for ax, metric in ((ax_time, "time"), (ax_rate, rate_metric)):
                points = sorted((r.x, r.p50, r.p20, r.p80) for r in series if r.metric == metric)
                if not points:
                    continue
                xs, mids, lows, highs = zip(*points)
                ax.errorbar(xs, mids, yerr=[[m - lo for m, lo in zip(mids, lows)],
                                            [hi - m for m, hi in zip(mids, highs)]],
                            marker="o", capsize=3, label=provider)
        x_label = group[0].x_label
        unit = "TFLOP/s" if rate_metric == "tflops" else "GB/s (bytes it must move / time)"
        for ax, ylabel in ((ax_time, "median time per call (ms)"), (ax_rate, unit)):
            ax.set_xscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        ax_time.set_yscale("log")
        ax_rate.legend(fontsize=8)
        first = group[0]
        device = first.gpu if first.device == "cuda" else "CPU (no GPU)"
        fig.suptitle(f"{kernel} {mode} {dtype} - {device}, commit {first.commit}", fontsize=10)
        fig.tight_layout()
        path = out / f"plot_{_slug(kernel)}_{_slug(mode)}_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _figures(rows: list[Row]) -> "OrderedDict[tuple, list[Row]]":
    figures: OrderedDict = OrderedDict()
    for r in rows:
        if r.kernel != CEILING:
            figures.setdefault((r.kernel, r.mode, r.dtype), []).append(r)
    return figures


def _by_provider(rows: list[Row]) -> "OrderedDict[str, list[Row]]":
    providers: OrderedDict = OrderedDict()
    for r in rows:
        providers.setdefault(r.provider, []).append(r)
    return providers


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")
