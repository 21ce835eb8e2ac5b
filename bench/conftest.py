"""pytest-benchmark side of the benchmarks: ``pytest bench/`` times every case of the suites with
the ``benchmark`` fixture, so ``--benchmark-json`` and ``pytest-benchmark compare`` work.

    pytest bench/ --bench-size quick --benchmark-json=out.json
    pytest bench/ --bench-suite cross_entropy -k "fastgd or torch]"

Each timed round is one call followed by a device synchronisation (host clock); the CLI
(``python -m bench``) times with CUDA events instead and adds bandwidth, ceilings and memory.
"""
import torch

from bench.case import Case
from bench.suites import SUITES


def pytest_addoption(parser):
    group = parser.getgroup("fastgd bench")
    group.addoption("--bench-size", default="quick", choices=("full", "quick", "tiny"),
                    help="size preset of the cases (default: quick)")
    group.addoption("--bench-suite", action="append", choices=sorted(SUITES),
                    help="suite to run (repeatable; default: all)")


def pytest_generate_tests(metafunc):
    if "bench_item" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    items = []
    for name in config.getoption("bench_suite") or list(SUITES):
        items += SUITES[name].cases(device, config.getoption("bench_size"))
    ids = [item.name if isinstance(item, Case) else f"skipped:{item.name}" for item in items]
    metafunc.parametrize("bench_item", items, ids=ids)
