"""``torchrun --nproc-per-node N -m fastgd.demo --fsdp``: the demo trained with FSDP2 on gloo
ranks follows the curves of one process with the same global batch, only rank 0 prints and
writes, and a bad launch is refused in one line.

Each test launches the real command (torchrun's ``--standalone`` picks a free port itself) with a
timeout, so a rank that hangs fails the test instead of stalling the suite. The ranks inherit
this session's environment: without CUDA they run fastgd's kernels interpreted, on the local
shards FSDP2 hands the optimizer.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from tolerances import TRAINING_CURVE_ATOL

# Tiny on purpose (interpreted kernels, one program per token row). --accum 2 so the gradient
# accumulation's normaliser (the whole batch's token count, split across ranks) is exercised;
# --compare so the torch stack runs sharded too; eval_sequences 3 is not a multiple of 2 or 4,
# so the validation windows need padding with ignored targets to split evenly across ranks.
TINY = ["--context", "16", "--layers", "2", "--dim", "32", "--heads", "2", "--steps", "6",
        "--batch-size", "4", "--accum", "2", "--lr", "1e-2", "--warmup", "1",
        "--eval-every", "3", "--eval-sequences", "3", "--patience", "0", "--log-every", "2",
        "--dtype", "float32", "--no-progress", "--sample-bytes", "0", "--compare",
        "--device", "cpu"]  # gloo ranks even where a GPU is (one GPU cannot host 4 ranks)
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> str:
    """A small learnable corpus generated from a fixed seed (six files, one held out)."""
    folder = tmp_path_factory.mktemp("toy")
    rng = torch.Generator().manual_seed(99)
    words = ["alpha", "beta", "gamma", "def", "return", "self", "(", ")", ":"]
    for i in range(6):
        picks = torch.randint(0, len(words), (300,), generator=rng).tolist()
        (folder / f"part{i}.txt").write_text(" ".join(words[j] for j in picks) + "\n")
    return str(folder)


def _env() -> dict:
    # one thread per rank: the ranks share the machine's two cores
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _demo(argv: list[str], processes: int = 0) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", str(processes)] if processes else [sys.executable])
    return subprocess.run([*launcher, "-m", "fastgd.demo", *argv], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def _curves(path) -> dict:
    """(run, step) -> (train_loss, val_loss, grad_norm, lr): everything but the timings."""
    with open(path) as f:
        return {(r["run"], int(r["step"])): (r["train_loss"], r["val_loss"], r["grad_norm"],
                                            r["lr"]) for r in csv.DictReader(f)}


def _close(a: str, b: str, atol: float) -> bool:
    return a == b == "" or (a != "" and b != "" and abs(float(a) - float(b)) <= atol)


@pytest.mark.parametrize("processes", [2, 4])
def test_fsdp_run_follows_the_one_process_curves(tmp_path, toy_folder, processes):
    one = _demo(["--data", toy_folder, "--out", str(tmp_path / "one"), *TINY])
    assert one.returncode == 0, one.stderr
    many = _demo(["--data", toy_folder, "--out", str(tmp_path / "many"), "--fsdp", *TINY],
                 processes)
    assert many.returncode == 0, many.stderr[-3000:]

    expected, got = _curves(tmp_path / "one/metrics.csv"), _curves(tmp_path / "many/metrics.csv")
    assert got.keys() == expected.keys()
    assert {run for run, _ in got} == {"fastgd", "torch"}
    atol = TRAINING_CURVE_ATOL[torch.float32]
    for key, values in expected.items():
        for column, a, b in zip(("train_loss", "val_loss", "grad_norm", "lr"), values, got[key]):
            assert _close(a, b, atol), f"{key} {column}: one process {a}, {processes} ranks {b}"

    # rank 0 alone speaks and writes; nothing is checkpointed (the output says so)
    assert many.stdout.count("corpus:") == 1, many.stdout
    assert f"fsdp: {processes} processes (gloo)" in many.stdout
    assert "checkpoints: none (--fsdp writes no checkpoints)" in many.stdout
    assert "saved" not in many.stdout.replace("writes no checkpoints", "")
    assert (tmp_path / "many/demo.png").is_file()
    assert not list((tmp_path / "many").rglob("*.pt"))


def _last_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("fastgd demo: error:")]
    assert lines, done.stderr[-3000:]
    return lines[-1]


def test_fsdp_without_torchrun_says_how_to_launch(tmp_path, toy_folder):
    done = _demo(["--data", toy_folder, "--out", str(tmp_path), "--fsdp", *TINY])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "torchrun --nproc-per-node N -m fastgd.demo --fsdp" in _last_error_line(done)


def test_fsdp_batch_that_does_not_split_is_refused_before_training(tmp_path, toy_folder):
    argv = [*TINY, "--batch-size", "3"]  # 3 sequences cannot split evenly over 2 ranks
    done = _demo(["--data", toy_folder, "--out", str(tmp_path), "--fsdp", *argv], 2)
    assert done.returncode != 0
    # torchrun prints its own traceback for a failed child; none comes from the demo's code
    assert "fastgd/demo/" not in done.stderr, done.stderr[-3000:]
    assert "--batch-size 3 (the global micro-batch) must be divisible by 2" in (
        _last_error_line(done))
    assert not (tmp_path / "metrics.csv").exists()


def test_fsdp_with_resume_is_refused(capsys):
    from fastgd.demo import cli

    assert cli.main(["--fsdp", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgd demo: error: --fsdp writes no checkpoints"), err
