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
    timed = {(r["kernel"], r["provider"], r["mode"]) for r in rows if r["metric"] == "time"}
    assert timed == (
        {("cross_entropy", p, m) for p in ("fastgd", "torch") for m in ("fwd", "bwd", "fwd+bwd")}
        | {("adamw", p, m) for p in ("fastgd", "torch foreach", "torch fused")
           for m in ("step", "step+clip")}
        | {("linear_cross_entropy", p, m) for p in ("fastgd", "torch") for m in ("fwd", "fwd+bwd")})
    assert all(float(r["p50"]) > 0 for r in rows)
    assert {r["device"] for r in rows} == {DEVICE}
    table = (tmp_path / "results.md").read_text()
    assert "## adamw · step+clip" in table and "vs torch foreach" in table
    if DEVICE == "cpu":
        assert "No GPU:" in printed and "**No GPU in this run.**" in table
    else:
        assert any(r["metric"] == "peak_memory" for r in rows)


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
