"""Long-form results: one :class:`Row` per kernel x provider x mode x dtype x shape x metric, with
the 20th/50th/80th percentiles and the machine, and their CSV and JSON forms. The markdown table
(:mod:`bench.table`) and the plots (:mod:`bench.plots`) are drawn from these rows;
:mod:`bench.folder` writes all of them into one results folder."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Optional

from . import timing
from .case import Case
from .machine import Machine

# metric -> unit
UNITS = {
    "time": "ms",
    "bandwidth": "GB/s",
    "copy_pct": "% of copy",
    "tflops": "TFLOP/s",
    "matmul_pct": "% of matmul",
    "peak_memory": "MiB",
    "host_time": "ms CPU",
}
CEILING = "ceiling"  # the kernel name of the rows that hold the measured ceilings


@dataclasses.dataclass
class Row:
    kernel: str
    provider: str
    mode: str
    dtype: str
    shape: str
    x: float
    x_label: str
    metric: str
    unit: str
    p20: float
    p50: float
    p80: float
    bytes: int
    flops: int
    device: str
    gpu: str
    torch: str
    triton: str
    commit: str
    date: str


FIELDS = [f.name for f in dataclasses.fields(Row)]


@dataclasses.dataclass
class Ceilings:
    """Measured in the same run: device-copy GB/s and bf16 matrix-product TFLOP/s (medians)."""

    copy_gbps: Optional[float] = None
    matmul_tflops: Optional[float] = None


@dataclasses.dataclass
class Measurement:
    """What the runner measured for one case."""

    time: timing.Timing
    peak_bytes: Optional[int] = None
    host_time: Optional[timing.Timing] = None
    first_call_s: float = 0.0  # wall time of the untimed first call (compilation, lazy state)


def case_rows(case: Case, m: Measurement, ceilings: Ceilings, machine: Machine) -> list[Row]:
    """The rows of one measured case: its time and what follows from it."""

    def row(metric: str, p20: float, p50: float, p80: float) -> Row:
        return Row(case.kernel, case.provider, case.mode, case.dtype, case.shape, case.x,
                   case.x_label, metric, UNITS[metric], p20, p50, p80, case.nbytes, case.flops,
                   machine.device, machine.gpu, machine.torch, machine.triton, machine.commit,
                   machine.date)

    def rate(metric: str, amount: float, per: float, scale: float = 1.0) -> Row:
        # a rate's 20th percentile comes from the time's 80th: p20 <= p50 <= p80 in value
        t = m.time
        return row(metric, *(amount / (ms * 1e-3) / per * scale for ms in (t.p80, t.p50, t.p20)))

    rows = [row("time", *m.time)]
    if case.bound == "memory" and case.nbytes:
        rows.append(rate("bandwidth", case.nbytes, 1e9))
        if ceilings.copy_gbps:
            rows.append(rate("copy_pct", case.nbytes, 1e9, 100.0 / ceilings.copy_gbps))
    if case.bound == "compute" and case.flops:
        rows.append(rate("tflops", case.flops, 1e12))
        if ceilings.matmul_tflops:
            rows.append(rate("matmul_pct", case.flops, 1e12, 100.0 / ceilings.matmul_tflops))
    if m.peak_bytes is not None:
        mib = m.peak_bytes / 2 ** 20
        rows.append(row("peak_memory", mib, mib, mib))
    if m.host_time is not None:
        rows.append(row("host_time", *m.host_time))
    return rows


def ceiling_row(name: str, metric: str, values: tuple, nbytes: int, flops: int, shape: str,
                machine: Machine) -> Row:
    return Row(CEILING, name, "-", "fp32" if metric == "bandwidth" else "bf16", shape, 0.0, "",
               metric, UNITS[metric], *values, nbytes, flops, machine.device, machine.gpu,
               machine.torch, machine.triton, machine.commit, machine.date)


@dataclasses.dataclass
class ResultSet:
    machine: Machine
    command: str
    size: str
    ceilings: Ceilings = dataclasses.field(default_factory=Ceilings)
    rows: list[Row] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)  # {"name", "reason"}
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "machine": dataclasses.asdict(self.machine),
            "command": self.command,
            "size": self.size,
            "ceilings": dataclasses.asdict(self.ceilings),
            "notes": self.notes,
            "skipped": self.skipped,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def write_csv(rows: list[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow(dataclasses.asdict(r))


def read_csv(path: Path) -> list[Row]:
    """Rows back from :func:`write_csv` (numbers as numbers)."""
    numeric = {f.name: f.type for f in dataclasses.fields(Row)}
    rows = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            values = {}
            for name, text in record.items():
                kind = numeric[name]
                values[name] = (float(text) if kind == "float" else int(text) if kind == "int"
                                else text)
            rows.append(Row(**values))
    return rows
