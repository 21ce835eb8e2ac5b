"""``python -m bench``: run the benchmark suites and write one results folder.

    python -m bench                    # every suite, full sizes, into bench/results/<gpu>_<date>_<commit>/
                                       # (bench/out/cpu_<date>_<commit>/ without a GPU)
    python -m bench --quick            # the one-call GPU check's set (budgeted to its 2 minutes)
    python -m bench --suite cross_entropy --out /tmp/ce
    python -m bench --suite static     # only the static GPU-code report (no GPU needed)
    python -m bench --quick --out-parent "$OUT"   # into $OUT/<gpu>_<date>_<commit>/

Without a GPU it says so, times fastgd's PyTorch path beside torch on the CPU at small sizes, and
still writes the static report (what the compiler makes of each kernel for sm_90).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import folder, runner
from . import machine as machine_info
from .case import Case
from .results import ResultSet
from .suites import SUITES

BENCH_SUITES = ("cross_entropy", "optimizer", "linear_cross_entropy")
ALL_SUITES = BENCH_SUITES + ("static",)
QUICK_GPU_BUDGET_S = 95.0  # the one-call check gives `--quick` 120 s, start-up included


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run fastgd's benchmark suites and write one results folder.")
    parser.add_argument("--quick", action="store_true",
                        help="the small set: one shape per suite (the one-call GPU check)")
    parser.add_argument("--size", choices=("full", "quick", "tiny"),
                        help="size preset (overrides --quick; tiny: seconds, for tests)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="results folder (default: bench/results/<gpu>_<date>_<commit>/ on a "
                             "GPU, bench/out/cpu_<date>_<commit>/ without one)")
    parser.add_argument("--out-parent", type=Path, metavar="DIR",
                        help="write into DIR/<gpu>_<date>_<commit>/ (how bench/results/ is named)")
    parser.add_argument("--suite", nargs="+", choices=ALL_SUITES,
                        help="suites to run (default: all; 'static' is left out of a quick GPU "
                             "run, where the tests already compiled every kernel)")
    parser.add_argument("--provider", nargs="+",
                        help="only these providers (e.g. fastgd torch 'torch foreach')")
    parser.add_argument("--rep-ms", type=float, default=100.0,
                        help="milliseconds of timed calls per case (at least 10 calls)")
    parser.add_argument("--budget-s", type=float,
                        help=f"stop starting cases after this many seconds (quick on a GPU: "
                             f"{QUICK_GPU_BUDGET_S:.0f})")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = args.size or ("quick" if args.quick else "full")
    m = machine_info.current()
    # GPU runs land where results are committed; CPU runs in the git-ignored bench/out/
    default_parent = machine_info.REPO / "bench" / ("results" if m.has_gpu else "out")
    out = args.out or (args.out_parent or default_parent) / m.slug()
    suites = args.suite or [s for s in ALL_SUITES
                            if not (s == "static" and m.has_gpu and size == "quick")]
    budget = args.budget_s
    if budget is None and m.has_gpu and size == "quick":
        budget = QUICK_GPU_BUDGET_S
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                     else sys.argv[1:]))
    results = ResultSet(machine=m, command=command.strip(), size=size)
    say = _printer()

    if m.has_gpu:
        say(f"GPU: {m.gpu}; torch {m.torch}, triton {m.triton}; commit {m.commit}")
    else:
        say("No GPU: the Triton kernels cannot run here, so this run times fastgd's PyTorch path "
            "beside torch on the CPU at small sizes (no GPU figures), and writes the static report "
            "of the compiled kernels.")
        results.notes.append(
            f"No GPU in this run: CPU figures only ({os.cpu_count()} cores, torch using "
            f"{torch.get_num_threads()} threads; CPU times move with whatever else the machine "
            f"is running).")
    say(f"results folder: {out}")

    status = 0
    if "static" in suites:
        status |= _run_static(out, say)
        results.notes.append("Static report of the compiled kernels: static_sm90.md.")
    benches = [s for s in suites if s in BENCH_SUITES]
    if benches:
        status |= _run_benchmarks(benches, size, m.device, results, out, args, budget, say)
        written = folder.write(results, out, plots=not args.no_plots)
        say("")
        say((out / folder.MARKDOWN).read_text())
        say("wrote: " + ", ".join(p.name for p in written))
    return status


def _run_benchmarks(benches, size, device, results, out, args, budget, say) -> int:
    items = []
    for name in benches:
        items += SUITES[name].cases(device, size)
    if args.provider:
        items = [c for c in items if not isinstance(c, Case) or c.provider in args.provider]
    need_matmul = any(isinstance(c, Case) and c.bound == "compute" for c in items)
    runner.measure_ceilings(results, need_matmul, args.rep_ms, say)
    runner.run(items, results, out, args.rep_ms, budget, say)
    # fastgd failing is ours to fix; a baseline that fails here is reported, not an error
    failed = [s for s in results.skipped
              if s["reason"].startswith("failed") and s["name"].endswith("|fastgd]")]
    return 1 if failed else 0


def _run_static(out: Path, say) -> int:
    """The static report, in a subprocess without TRITON_INTERPRET (this process may have
    imported Triton interpreted, and interpreted kernels cannot be compiled)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    say("static report: compiling every kernel for sm_90 ...")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.static", "--out", str(out)],
                          cwd=machine_info.REPO, env=env, capture_output=True, text=True)
    say(proc.stdout)
    if proc.returncode != 0:
        say(proc.stderr[-3000:])
    say(f"static report: exit {proc.returncode} after {time.monotonic() - started:.0f} s "
        f"-> {out / 'static_sm90.md'}")
    return 0 if proc.returncode == 0 else 1


def _printer():
    def say(text: str) -> None:
        print(text, flush=True)

    return say


if __name__ == "__main__":
    sys.exit(main())
