"""One results folder: ``results.csv`` and ``results.json`` (the rows, :mod:`bench.results`),
``results.md`` (the table, :mod:`bench.table`) and the PNG plots (:mod:`bench.plots`). The only
module that knows all three, so the data types never import the views drawn from them."""
from __future__ import annotations

import json
from pathlib import Path

from . import table
from .plots import write as write_plots
from .results import ResultSet, write_csv

CSV = "results.csv"
JSON = "results.json"
MARKDOWN = "results.md"


def write(results: ResultSet, out: Path, plots: bool = True) -> list[Path]:
    """Write CSV, JSON, markdown (and plots) into ``out``; returns the files written. The plots go
    first: when they cannot be drawn they add a note, which the JSON and the table then carry."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(results.rows, out, results.notes) if plots else []
    data = [out / CSV, out / JSON, out / MARKDOWN]
    write_csv(results.rows, data[0])
    data[1].write_text(json.dumps(results.to_json(), indent=1) + "\n")
    data[2].write_text(table.render(results))
    return data + pngs
