"""Every benchmark case under pytest-benchmark (see conftest.py for the options)."""
import pytest

from bench.case import Skipped, Unavailable, prepare
from bench.timing import synchronize

ROUNDS = 20


def test_case(benchmark, bench_item):
    if isinstance(bench_item, Skipped):
        pytest.skip(bench_item.reason)
    case = bench_item
    try:
        fn = prepare(case)
    except Unavailable as e:
        pytest.skip(str(e))
    fn()  # compilation and lazy state stay out of the rounds
    synchronize(case.device)

    def one_call():
        fn()
        synchronize(case.device)

    benchmark.group = " | ".join(case.group)
    benchmark.extra_info.update(provider=case.provider, device=case.device, bytes=case.nbytes,
                                flops=case.flops)
    benchmark.pedantic(one_call, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median_s = benchmark.stats.stats.median
        if case.bound == "memory":
            benchmark.extra_info["GB/s"] = case.nbytes / median_s / 1e9
        else:
            benchmark.extra_info["TFLOP/s"] = case.flops / median_s / 1e12
