"""The benchmark machinery that turns times into the numbers a user reads: percentiles, derived
rates, the long-form CSV/JSON, the markdown table and the plots. Fabricated timings with known
answers; nothing here times a kernel."""
import json
import sys
import time

import numpy as np
import pytest

from bench import folder, timing
from bench.case import Case
from bench.machine import Machine
from bench.results import Ceilings, Measurement, ResultSet, case_rows, read_csv, write_csv

CPU = Machine("cpu", "none", "2.x", "3.x", "3.12", "abc1234", "2026-11-28T00:00:00Z")
GPU = Machine("cuda", "NVIDIA H200", "2.x", "3.x", "3.12", "abc1234", "2026-11-28T00:00:00Z")


def make_case(provider="fastgd", bound="memory", kernel="cross_entropy", shape="N=4 V=8"):
    return Case(kernel=kernel, provider=provider, mode="fwd", dtype="bf16", device="cuda",
                shape=shape, x=32, x_label="logits (N*V)", nbytes=10 ** 9,
                flops=2 * 10 ** 12 if bound == "compute" else 0, bound=bound, build=lambda: None)


def by_metric(rows):
    return {r.metric: r for r in rows}


def test_quantiles_match_numpy():
    samples = list(np.random.default_rng(0).exponential(1.0, size=37))
    got = timing.quantiles_of(samples)
    want = np.percentile(samples, [20, 50, 80])
    assert got == pytest.approx(tuple(want))
    assert timing.quantiles_of([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError):
        timing.quantiles_of([])


def test_rotation_covers_twice_the_l2_for_small_inputs_only():
    l2 = 60 << 20
    assert timing.rotation_sets(10 << 20, l2) == 12  # ceil(120 / 10)
    assert timing.rotation_sets(1 << 10, l2) == timing.MAX_ROTATION
    assert timing.rotation_sets(l2, l2) == 1
    assert timing.rotation_sets(1 << 10, 0) == 1  # CPU: no L2 figure, no rotation


class FakeClock:
    """A clock that moves only when the timed call runs: call i takes ``durations_ms[i]``."""

    def __init__(self, durations_ms):
        self.now_s, self.durations_ms, self.calls = 0.0, list(durations_ms), 0

    def __call__(self) -> float:
        return self.now_s

    def call(self) -> None:
        self.now_s += self.durations_ms[self.calls] / 1e3
        self.calls += 1


def test_cpu_timer_leaves_out_the_warm_up_and_reports_milliseconds(monkeypatch):
    # two warm-up calls (100 ms each: they must not count), then 1..10 ms; rep_ms=0: exactly
    # MIN_SAMPLES calls. Deciles of 1..10 (inclusive method): p20 = 2.8, p80 = 8.2.
    clock = FakeClock([100.0, 100.0] + [float(ms) for ms in range(1, 11)])
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    t = timing.time_calls(clock.call, "cpu", rep_ms=0.0)
    assert clock.calls == 2 + timing.MIN_SAMPLES
    assert t == pytest.approx((2.8, 5.5, 8.2))


def test_cpu_timer_measures_a_real_sleep():
    t = timing.time_calls(lambda: time.sleep(0.002), "cpu", rep_ms=1.0)
    assert 2.0 <= t.p20 <= t.p50 <= t.p80 < 200.0


def test_host_time_is_the_calling_threads_cpu_time(monkeypatch):
    clock = FakeClock([1.0, 2.0, 3.0, 4.0, 5.0])
    monkeypatch.setattr(timing.time, "thread_time", clock)
    assert timing.host_time_per_call(clock.call, "cpu", calls=5) == pytest.approx((1.8, 3.0, 4.2))
    monkeypatch.undo()
    # sleeping costs no CPU: a wall clock would report at least the 5 ms
    host = timing.host_time_per_call(lambda: time.sleep(0.005), "cpu", calls=3)
    assert host.p80 < 2.5


def test_memory_bound_rows_derive_bandwidth_from_the_time():
    m = Measurement(time=timing.Timing(1.0, 2.0, 4.0), peak_bytes=3 << 20)
    rows = by_metric(case_rows(make_case(), m, Ceilings(copy_gbps=1000.0), GPU))
    assert set(rows) == {"time", "bandwidth", "copy_pct", "peak_memory"}
    assert (rows["time"].p20, rows["time"].p50, rows["time"].p80) == (1.0, 2.0, 4.0)
    # 1 GB in 2 ms = 500 GB/s; the rate's p20 comes from the slow (p80) time
    bw = rows["bandwidth"]
    assert (bw.p20, bw.p50, bw.p80) == pytest.approx((250.0, 500.0, 1000.0))
    assert rows["copy_pct"].p50 == pytest.approx(50.0)
    assert rows["peak_memory"].p50 == pytest.approx(3.0)
    assert bw.unit == "GB/s" and bw.gpu == "NVIDIA H200" and bw.bytes == 10 ** 9


def test_compute_bound_rows_use_flops_and_no_bandwidth():
    m = Measurement(time=timing.Timing(2.0, 2.0, 2.0), host_time=timing.Timing(0.1, 0.2, 0.3))
    rows = by_metric(case_rows(make_case(bound="compute"), m,
                               Ceilings(copy_gbps=1000.0, matmul_tflops=800.0), GPU))
    assert set(rows) == {"time", "tflops", "matmul_pct", "host_time"}
    assert rows["tflops"].p50 == pytest.approx(1000.0)  # 2e12 FLOP in 2 ms
    assert rows["matmul_pct"].p50 == pytest.approx(125.0)
    assert rows["host_time"].p50 == 0.2


def test_csv_round_trip(tmp_path):
    m = Measurement(time=timing.Timing(1.0, 2.0, 4.0))
    rows = case_rows(make_case(), m, Ceilings(copy_gbps=800.0), GPU)
    write_csv(rows, tmp_path / "r.csv")
    assert read_csv(tmp_path / "r.csv") == rows


def _two_providers(machine) -> ResultSet:
    results = ResultSet(machine=machine, command="python -m bench --quick", size="quick",
                        ceilings=Ceilings(copy_gbps=1000.0))
    for provider, ms in (("torch", 3.0), ("fastgd", 1.5)):
        m = Measurement(time=timing.Timing(ms, ms, ms))
        results.rows += case_rows(make_case(provider), m, results.ceilings, machine)
    results.skipped.append({"name": "cross_entropy: liger", "reason": "not installed"})
    return results


def test_written_folder_has_json_csv_and_a_readable_table(tmp_path):
    folder.write(_two_providers(GPU), tmp_path, plots=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["gpu"] == "NVIDIA H200" and data["ceilings"]["copy_gbps"] == 1000.0
    assert {(r["provider"], r["metric"]) for r in data["rows"]} == {
        (p, m) for p in ("torch", "fastgd") for m in ("time", "bandwidth", "copy_pct")}
    assert len(read_csv(tmp_path / "results.csv")) == 6
    table = (tmp_path / "results.md").read_text()
    assert "## cross_entropy · fwd" in table
    assert "| bf16 | N=4 V=8 | 1.00 GB | fastgd | 1.50 | 1.50-1.50 | 667 | 66.7 | 2.00x |" in table
    assert "| torch | 3.00 |" in table and "baseline" in table
    assert "device copy 1,000 GB/s" in table
    assert "- cross_entropy: liger: not installed" in table
    assert "No GPU" not in table


def test_cpu_table_says_there_is_no_gpu(tmp_path):
    folder.write(_two_providers(CPU), tmp_path, plots=False)
    assert "**No GPU in this run.**" in (tmp_path / "results.md").read_text()


def test_plots_are_png_files(tmp_path):
    results = _two_providers(GPU)
    written = folder.write(results, tmp_path, plots=True)
    pngs = [p for p in written if p.suffix == ".png"]
    assert [p.name for p in pngs] == ["plot_cross-entropy_fwd_bf16.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_table_says_why_there_are_no_plots(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    written = folder.write(_two_providers(GPU), tmp_path, plots=True)
    assert not [p for p in written if p.suffix == ".png"]
    note = "No plots: matplotlib is not installed"
    assert note in (tmp_path / "results.md").read_text()
    assert any(note in n for n in json.loads((tmp_path / "results.json").read_text())["notes"])


def test_readme_section_comes_from_gpu_results_only(tmp_path):
    from bench import readme

    assert "No GPU figures yet" in readme.render([])
    folder.write(_two_providers(CPU), tmp_path / "cpu_run", plots=False)
    assert readme.gpu_folders(tmp_path) == []
    folder.write(_two_providers(GPU), tmp_path / "gpu_run", plots=False)
    assert readme.gpu_folders(tmp_path) == [tmp_path / "gpu_run"]
    text = readme.render([tmp_path / "gpu_run"])
    assert "NVIDIA H200, commit abc1234" in text and "`python -m bench --quick`" in text
    assert "| cross_entropy | fwd | bf16 | N=4 V=8 | 1.50 | torch | 3.00 | 2.00x | 66.7 |" in text
