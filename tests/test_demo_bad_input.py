"""The demo's command line against bad input and bad luck: a crafted checkpoint is refused without
running it, an earlier run is never replaced unasked, SIGTERM stops like Ctrl-C, options that
cannot work (inf, a seed beyond 64 bits, a model bigger than the memory, a corrupt best.pt) end in
one line, the warmup default follows --steps, and a diverging run stops with nan in its metrics.

Each case is a tiny model on the PyTorch path (--backend torch): a second or less, in-process,
except where a regression could exhaust the machine (then a subprocess with a memory limit).
"""
from __future__ import annotations

import csv
import math
import os
import pickle
import resource
import signal
import subprocess
import sys

import pytest
import torch

from fastgd.demo import app, cli, memory
from fastgd.demo.config import INTERPRETER_PRESET, Config, ConfigError, with_overrides
from fastgd.demo.report import Silent

TINY = ["--context", "16", "--layers", "1", "--dim", "32", "--heads", "2", "--batch-size", "2",
        "--steps", "4", "--warmup", "1", "--eval-every", "2", "--eval-sequences", "4",
        "--log-every", "1", "--no-progress", "--sample-bytes", "0", "--backend", "torch",
        "--dtype", "float32"]


# the demo CLI tests' fixtures: one torch thread per tiny op, a toy source folder
from test_demo_cli import one_thread, toy_folder  # noqa: E402,F401


def _argv(toy_folder, out, *extra) -> list[str]:
    return ["--data", toy_folder, "--out", str(out), *TINY, *extra]  # later options win


def _one_error_line(capsys, argv, status=2) -> str:
    got = cli.main(argv)
    err = capsys.readouterr().err
    assert got == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgd demo: error: "), err
    return lines[0]


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


class _SignalAt(Silent):
    """Sends ``signum`` to this process right after optimizer step ``at``."""

    def __init__(self, signum: int, at: int) -> None:
        super().__init__()
        self.signum, self.at, self.steps = signum, at, 0

    def advance(self) -> None:
        self.steps += 1
        if self.steps == self.at:
            signal.raise_signal(self.signum)


class _SignalNotHandled(Exception):
    pass


def _interrupted_run(monkeypatch, argv, signum, at) -> int:
    """``cli.main(argv)`` with ``signum`` sent after step ``at``. Were the demo not to handle the
    signal, the test's own handler fails the test (SIGTERM's default would end pytest)."""
    def unhandled(signum, frame):
        raise _SignalNotHandled(signal.Signals(signum).name)

    monkeypatch.setattr(app, "make_reporter", lambda *a: _SignalAt(signum, at))
    previous = signal.signal(signum, unhandled)
    try:
        return cli.main(argv)
    finally:
        signal.signal(signum, previous)
        monkeypatch.undo()


class _MakesMarker:
    """Unpickling this calls os.mkdir(marker): what a crafted checkpoint could run instead."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _save_with_torch(payload, path):
    torch.save(payload, path)


def _save_with_pickle(payload, path):  # torch.load reads plain pickles too
    with open(path, "wb") as f:
        pickle.dump(payload, f)


@pytest.mark.parametrize("save", [_save_with_torch, _save_with_pickle],
                         ids=["torch.save", "pickle"])
def test_crafted_checkpoint_is_refused_without_running_it(capsys, tmp_path, toy_folder, save):
    marker = tmp_path / "marker"
    (tmp_path / "out" / "fastgd").mkdir(parents=True)
    save({"format": 2, "stack": "fastgd", "step": 1, "model": _MakesMarker(marker)},
         tmp_path / "out" / "fastgd" / "last.pt")
    line = _one_error_line(capsys, _argv(toy_folder, tmp_path / "out", "--resume"))
    assert "refused" in line and "last.pt" in line, line
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_existing_run_is_not_replaced_without_overwrite(capsys, tmp_path, toy_folder):
    out = tmp_path / "out"
    assert cli.main(_argv(toy_folder, out)) == 0
    kept = {name: (out / name).read_bytes()
            for name in ("metrics.csv", "fastgd/best.pt", "fastgd/last.pt")}
    capsys.readouterr()
    line = _one_error_line(capsys, _argv(toy_folder, out, "--lr", "1e-2"))
    assert "--resume" in line and "--overwrite" in line and "fastgd/best.pt" in line, line
    for name, content in kept.items():
        assert (out / name).read_bytes() == content, f"{name} was replaced"
    assert cli.main(_argv(toy_folder, out, "--lr", "1e-2", "--overwrite")) == 0
    assert _rows(out)[0]["lr"] != _rows(out)[-1]["lr"]  # a new run: the schedule of the new lr
    assert float(_rows(out)[1]["lr"]) == pytest.approx(1e-2)


def test_sigterm_then_resume_logs_what_an_uninterrupted_run_logs(capsys, monkeypatch, tmp_path,
                                                                 toy_folder):
    """SIGTERM after step 5 of 6, between logged rows (--log-every 2): exit 143 and a checkpoint
    at step 5; the resumed run's row at step 6 averages steps 5 and 6, like the straight run's."""
    options = ["--steps", "6", "--eval-every", "3", "--log-every", "2", "--dropout", "0.1"]
    assert cli.main(_argv(toy_folder, tmp_path / "straight", *options)) == 0

    argv = _argv(toy_folder, tmp_path / "out", *options)
    assert _interrupted_run(monkeypatch, argv, signal.SIGTERM, at=5) == 128 + signal.SIGTERM
    assert "--resume" in capsys.readouterr().out
    last = torch.load(tmp_path / "out" / "fastgd" / "last.pt", weights_only=True)
    assert last["step"] == 5 and last["running_loss"]["steps"] == 1

    assert cli.main([*argv, "--resume"]) == 0
    columns = ("step", "train_loss", "grad_norm", "val_loss", "lr")
    resumed, straight = _rows(tmp_path / "out"), _rows(tmp_path / "straight")
    assert [r["step"] for r in straight] == ["0", "2", "3", "4", "6"]
    assert [[r[c] for c in columns] for r in resumed] == [[r[c] for c in columns]
                                                          for r in straight]


BAD_VALUES = [
    (["--max-grad-norm", "inf"], "--max-grad-norm inf"),
    (["--max-grad-norm", "nan"], "--max-grad-norm nan"),
    (["--lr", "inf"], "--lr inf"),
    (["--weight-decay", "inf"], "--weight-decay inf"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--warmup", "4"], "--warmup 4 must be smaller than --steps 4"),  # explicit: still refused
    (["--resume", "--overwrite"], "pass one of them"),
]


@pytest.mark.parametrize("extra,needle", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_value_is_one_line(capsys, tmp_path, toy_folder, extra, needle):
    assert needle in _one_error_line(capsys, _argv(toy_folder, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_largest_seed_trains(tmp_path, toy_folder):
    """Seeds up to 2**64 - 1 are torch's range; the per-step batch seed wraps instead of
    overflowing."""
    assert cli.main(_argv(toy_folder, tmp_path / "out", "--seed", str(2**64 - 1))) == 0


def test_warmup_default_follows_steps():
    assert cli.parse(["--steps", "40"], interpreting=False).warmup_steps == 4
    assert cli.parse([], interpreting=False).warmup_steps == 40  # 600 steps: capped at 40
    assert cli.parse([], interpreting=True).warmup_steps == INTERPRETER_PRESET["steps"] // 10
    assert cli.parse(["--steps", "3"], interpreting=False).warmup_steps == 0


def test_max_grad_norm_none_disables_clipping():
    """A given None is not "not given": the default (1.0) must not come back."""
    assert cli.parse(["--max-grad-norm", "none"], interpreting=False).max_grad_norm is None
    assert cli.parse([], interpreting=False).max_grad_norm == Config().max_grad_norm


def test_few_steps_without_warmup_option_train(tmp_path, toy_folder):
    argv = _argv(toy_folder, tmp_path / "out", "--steps", "3")
    at = argv.index("--warmup")
    assert cli.main(argv[:at] + argv[at + 2:]) == 0


@pytest.mark.parametrize("changed", [["--lr", "1e-2"], ["--max-grad-norm", "none"],
                                     ["--warmup", "2"]], ids=lambda a: a[0])
def test_resume_refuses_options_the_checkpoint_would_override(capsys, monkeypatch, tmp_path,
                                                              toy_folder, changed):
    """The optimizer's saved param groups (lr, weight decay, max_grad_norm) and the schedule
    would win over a new value without a word: refuse instead, naming the option."""
    argv = _argv(toy_folder, tmp_path / "out")
    assert _interrupted_run(monkeypatch, argv, signal.SIGINT, at=1) == 130
    capsys.readouterr()
    line = _one_error_line(capsys, [*argv, "--resume", *changed])
    assert f"was trained with {changed[0]} " in line, line


def test_resume_with_corrupt_best_checkpoint_fails_before_training(capsys, monkeypatch,
                                                                   tmp_path, toy_folder):
    out = tmp_path / "out"
    argv = _argv(toy_folder, out)
    assert _interrupted_run(monkeypatch, argv, signal.SIGINT, at=3) == 130
    best = out / "fastgd" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])  # truncated
    kept = {p: p.read_bytes() for p in (out / "fastgd" / "last.pt", out / "metrics.csv")}
    capsys.readouterr()
    line = _one_error_line(capsys, [*argv, "--resume"])
    assert "best.pt" in line, line
    for path, content in kept.items():  # nothing trained, nothing written
        assert path.read_bytes() == content, path


def test_model_too_big_for_memory_is_refused_before_allocating(tmp_path, toy_folder):
    """In a subprocess whose address space is limited: were the model allocated, it would fail
    with a MemoryError traceback here instead of taking the machine's memory."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    done = subprocess.run(
        [sys.executable, "-m", "fastgd.demo", *_argv(toy_folder, tmp_path / "out"),
         "--layers", "1000000"],
        preexec_fn=limit_memory, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith("fastgd demo: error: too big") and "\n" not in line, line
    assert "--layers 1000000" in line
    assert not (tmp_path / "out").exists()


def test_memory_estimate_refuses_large_batches_and_accepts_the_defaults():
    cpu = torch.device("cpu")
    free = memory.available_bytes(cpu)
    assert free is not None and free > 0
    huge_batch = with_overrides(Config(), batch_size=10**9)
    with pytest.raises(ConfigError, match="--batch-size 1000000000"):
        memory.check_fits(huge_batch, cpu)
    state, activations = memory.training_bytes(Config(), cpu)
    assert state == 16 * memory.parameter_count(Config())
    assert state + activations < 2**30  # the default run needs well under 1 GiB
    # The meta-device count is the model's own: compare with a real (small) model.
    small = with_overrides(Config(), layers=2, dim=16, heads=2, context=8)
    real = memory.TinyGPT(256, 8, 16, 2, 2, 0.0)
    assert memory.parameter_count(small) == sum(p.numel() for p in real.parameters())


def test_divergence_stops_with_nan_in_the_metrics_and_keeps_finite_checkpoints(
        capsys, tmp_path, toy_folder):
    """--lr 1e10: the first update wrecks the weights. The run stops at the next logged row (a
    mean over two steps here) with exit status 3, writes nan (not an empty cell) and keeps the
    checkpoints of step 0."""
    out = tmp_path / "out"
    line = _one_error_line(capsys, _argv(toy_folder, out, "--lr", "1e10", "--log-every", "2",
                                         "--eval-every", "4"), status=3)
    assert "diverged" in line and "nan" in line and "--lr" in line, line
    rows = _rows(out)
    assert [r["step"] for r in rows] == ["0", "2"]
    assert rows[0]["train_loss"] == "" and rows[1]["train_loss"] == "nan"
    assert rows[1]["val_loss"] == ""  # not measured: still an empty cell
    for name in ("best.pt", "last.pt"):
        state = torch.load(out / "fastgd" / name, weights_only=True)
        assert state["step"] == 0, name
        assert all(t.isfinite().all() for t in state["model"].values()), name
    assert math.isfinite(float(rows[0]["val_loss"]))
