"""The README's results section, generated from committed results only.

``python -m bench.readme [FOLDER ...]`` reads ``results.json`` from the given results folders
(default: every folder under ``bench/results/`` that was measured on a GPU) and prints markdown:
per folder the machine, the command that produced it, and fastgd's median time beside the
baseline's for every case. With no GPU results it says so plainly, so the README never shows a
figure nobody measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

from .folder import JSON, MARKDOWN
from .machine import REPO
from .suites import BASELINES
from .table import format_number

NO_GPU_FIGURES = ("No GPU figures yet: no benchmark run on a GPU has been committed under "
                  "`bench/results/`. Run `python -m bench` on a GPU to produce them.")


def gpu_folders(root: Path) -> list[Path]:
    folders = []
    for path in sorted(root.glob(f"*/{JSON}")):
        if json.loads(path.read_text())["machine"]["device"] == "cuda":
            folders.append(path.parent)
    return folders


def render(folders: list[Path]) -> str:
    if not folders:
        return NO_GPU_FIGURES + "\n"
    return "\n".join(_folder(f) for f in folders)


def _folder(folder: Path) -> str:
    data = json.loads((folder / JSON).read_text())
    m = data["machine"]
    copy = data["ceilings"].get("copy_gbps")
    lines = [f"### {m['gpu']}, commit {m['commit']}, {m['date'][:10]}", "",
             f"`{data['command']}` (torch {m['torch']}, triton {m['triton']}; device copy "
             f"{format_number(copy) if copy else '?'} GB/s measured in the same run; full table: "
             f"`{_relative(folder)}/{MARKDOWN}`)", "",
             "| kernel | mode | dtype | shape | fastgd ms | baseline | baseline ms | speed-up "
             "| fastgd % of copy |", "|---|---|---|---|---|---|---|---|---|"]
    medians: OrderedDict = OrderedDict()  # (kernel, mode, dtype, shape) -> {provider: {metric: p50}}
    for r in data["rows"]:
        key = (r["kernel"], r["mode"], r["dtype"], r["shape"])
        medians.setdefault(key, {}).setdefault(r["provider"], {})[r["metric"]] = r["p50"]
    for (kernel, mode, dtype, shape), providers in medians.items():
        ours = providers.get("fastgd", {}).get("time")
        baseline = BASELINES.get(kernel)
        theirs = providers.get(baseline, {}).get("time")
        if ours is None or theirs is None:
            continue
        pct = providers["fastgd"].get("copy_pct")
        lines.append(f"| {kernel} | {mode} | {dtype} | {shape} | {format_number(ours)} "
                     f"| {baseline} | {format_number(theirs)} | {theirs / ours:.2f}x "
                     f"| {format_number(pct) if pct is not None else ''} |")
    lines.append("")
    return "\n".join(lines)


def _relative(folder: Path) -> str:
    try:
        return str(folder.resolve().relative_to(REPO))
    except ValueError:
        return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="results folders (default: the "
                        "GPU ones under bench/results/)")
    args = parser.parse_args(argv)
    print(render(args.folders or gpu_folders(REPO / "bench" / "results")), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
