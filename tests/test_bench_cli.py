"""``python -m bench`` end to end in its tiny preset (milliseconds per case), and the runner's
handling of cases that cannot run. On a GPU the same test runs the CUDA path (do_bench timing,
peak memory) without the providers that compile (torch.compile) or may be missing (Liger)."""
import csv

import pytest
import torch

from bench import runner
from bench.__main__ import main
from bench.case import Case, Skipped, Unavailable
from bench.machine import current
from bench.results import ResultSet

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def one_cpu_thread():
    """Tiny CPU ops with torch's thread pool on a busy 2-core machine wait for descheduled
    threads (milliseconds per op); one thread keeps this test to seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_tiny_run_writes_every_suite(tmp_path, capsys, one_cpu_thread):
    status = main(["--size", "tiny", "--out", str(tmp_path), "--rep-ms", "1", "--no-plots",
                   "--suite", "cross_entropy", "optimizer", "linear_cross_entropy",
                   "--provider", "fastgd", "torch", "torch foreach", "torch fused"])
    printed = capsys.readouterr().out
    assert status == 0, printed[-3000:]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    metrics: dict = {}  # (kernel, provider, mode) -> the metrics its rows hold
    for r in rows:
        metrics.setdefault((r["kernel"], r["provider"], r["mode"]), set()).add(r["metric"])
    assert metrics == expected_metrics(DEVICE)
    for r in rows:  # a rate read from the wrong end of the time's range would come out reversed
        p20, p50, p80 = (float(r[q]) for q in ("p20", "p50", "p80"))
        floor_ok = p20 >= 0 if r["metric"] == "peak_memory" else p20 > 0  # a step may add none
        assert floor_ok and p20 <= p50 <= p80 < float("inf"), r
    assert {r["device"] for r in rows} == {DEVICE}
    table = (tmp_path / "results.md").read_text()
    assert "## adamw · step+clip" in table and "vs torch foreach" in table
    if DEVICE == "cpu":
        assert "No GPU:" in printed and "**No GPU in this run.**" in table
    else:
        assert any(r["metric"] == "peak_memory" for r in rows)


def expected_metrics(device: str) -> dict:
    """What every measured case of the tiny run reports: memory-bound cases a bandwidth and its
    share of the copy ceiling, the LM head a FLOP rate (a share of the matmul ceiling only on a
    GPU, where that ceiling is measured), the optimizer its host time on a GPU, every GPU case
    its peak memory; and the ceilings themselves."""
    gpu = device == "cuda"
    memory = {"time", "bandwidth", "copy_pct"} | ({"peak_memory"} if gpu else set())
    compute = {"time", "tflops"} | ({"matmul_pct", "peak_memory"} if gpu else set())
    out = {("cross_entropy", p, m): memory for p in ("fastgd", "torch")
           for m in ("fwd", "bwd", "fwd+bwd")}
    out.update({("adamw", p, m): memory | ({"host_time"} if gpu else set())
                for p in ("fastgd", "torch foreach", "torch fused") for m in ("step", "step+clip")})
    out.update({("linear_cross_entropy", p, m): compute for p in ("fastgd", "torch")
                for m in ("fwd", "fwd+bwd")})
    out[("ceiling", "device copy", "-")] = {"bandwidth"}
    if gpu:
        out[("ceiling", "bf16 matmul", "-")] = {"tflops"}
    return out


def _case(name: str, build) -> Case:
    return Case(kernel="k", provider=name, mode="fwd", dtype="fp32", device="cpu", shape="s",
                x=1, x_label="x", nbytes=8, build=build)


def _unavailable():
    raise Unavailable("not installed here")


def _broken():
    raise RuntimeError("kernel exploded")


def test_runner_records_failures_and_goes_on():
    results = ResultSet(machine=current(), command="test", size="tiny")
    items = [_case("missing", _unavailable), _case("broken", _broken),
             Skipped("k: other", "without a GPU"), _case("works", lambda: (lambda: None))]
    runner.run(items, results, out=None, rep_ms=0.1, budget_s=None, log=lambda s: None)
    reasons = {s["name"]: s["reason"] for s in results.skipped}
    assert reasons["k[fwd|fp32|s|missing]"] == "not installed here"
    assert reasons["k[fwd|fp32|s|broken]"] == "failed: RuntimeError: kernel exploded"
    assert reasons["k: other"] == "without a GPU"
    assert {r.provider for r in results.rows} == {"works"}


def test_runner_stops_starting_cases_when_the_budget_is_spent():
    results = ResultSet(machine=current(), command="test", size="tiny")
    calls = []
    runner.run([_case("a", lambda: calls.append), _case("b", lambda: calls.append)], results,
               out=None, rep_ms=0.1, budget_s=-1.0, log=lambda s: None)
    assert not calls and not results.rows
    assert all("time budget" in s["reason"] for s in results.skipped)


def test_unknown_suite_is_refused():
    with pytest.raises(SystemExit):
        main(["--suite", "softmax"])
