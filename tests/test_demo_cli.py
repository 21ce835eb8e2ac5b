"""The demo's command line: bad options end in one line on stderr (exit status 2, no traceback),
a whole tiny ``--compare`` run writes its metrics, plot and text sample, ``--backend interpret``
restarts itself under Triton's interpreter, and the stdlib corpus is deterministic and split by
file."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from fastgd.demo import cli, data
from tolerances import TRAINING_CURVE_ATOL

TINY = ["--context", "16", "--layers", "1", "--dim", "32", "--heads", "2", "--batch-size", "2",
        "--steps", "4", "--warmup", "1", "--eval-every", "2", "--eval-sequences", "4",
        "--log-every", "1", "--no-progress",
        "--dtype", "float32"]  # on a GPU the default is bf16 autocast: keep the comparison exact


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: two threads on a busy 2-core machine cost far more than they save."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("toy")
    rng = torch.Generator().manual_seed(7)
    words = ["if", "else", "x", "y", "=", "+", "1", "2", "print", "(", ")"]
    for i in range(4):
        picks = torch.randint(0, len(words), (200,), generator=rng).tolist()
        (folder / f"f{i}.py").write_text(" ".join(words[j] for j in picks) + "\n")
    return str(folder)


def _error_line(capsys, argv) -> str:
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgd demo: error: "), err
    return lines[0]


# Each bad option, and a word its message must contain to point at the fix.
BAD_OPTIONS = [
    (["--lr", "-1"], "--lr"),  # negative learning rate
    (["--lr", "0"], "--lr"),  # zero: nothing would train
    (["--lr", "-3e-4"], "--lr=-3e-4"),  # argparse takes "-3e-4" for an option: say how to write it
    (["--data", "/nonexistent/corpus"], "no such file"),
    (["--steps", "0"], "--steps"),
    (["--dim", "30", "--heads", "4"], "divisible"),
    (["--warmup", "50", "--steps", "50"], "--warmup"),
    (["--dropout", "1.5"], "--dropout"),
    (["--max-grad-norm", "-2"], "--max-grad-norm"),
    (["--max-grad-norm", "big"], "--max-grad-norm"),  # neither a number nor 'none'
    (["--device", "tpu"], "--device"),
    (["--backend", "interpret", "--device", "cuda"], "--device cpu"),
    (["--no-such-option"], "unrecognized"),
]


@pytest.mark.parametrize("argv,needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_is_one_line(capsys, argv, needle):
    assert needle in _error_line(capsys, argv)


def test_corpus_too_small_is_one_line(capsys, tmp_path):
    (tmp_path / "tiny.txt").write_text("print(1)\n")
    line = _error_line(capsys, ["--data", str(tmp_path / "tiny.txt"), "--context", "64"])
    assert "too small" in line and "--context" in line


def test_resume_without_checkpoint_is_one_line(capsys, tmp_path, toy_folder):
    line = _error_line(capsys, ["--data", toy_folder, "--out", str(tmp_path), "--resume", *TINY])
    assert "no checkpoint" in line


def test_unknown_command_of_console_script(capsys):
    assert cli.fastgd_command(["trian"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_help_exits_0_and_lists_the_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert "exit status:" in capsys.readouterr().out


def test_console_script_prints_its_version(capsys):
    import fastgd

    assert cli.fastgd_command(["--version"]) == 0
    assert capsys.readouterr().out == f"fastgd {fastgd.__version__}\n"


def test_compare_run_writes_metrics_plot_and_sample(capsys, tmp_path, toy_folder):
    status = cli.main(["--data", toy_folder, "--out", str(tmp_path), "--compare",
                       "--sample-bytes", "20", *TINY])
    out = capsys.readouterr().out
    assert status == 0, out
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["step"]) for r in rows] == [
        (run, str(step)) for run in ("fastgd", "torch") for step in range(5)]
    assert sum(1 for r in rows if r["val_loss"]) == 6  # steps 0, 2 and 4 of each run
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("fastgd/best.pt", "fastgd/last.pt", "torch/best.pt", "torch/last.pt"):
        assert (tmp_path / name).is_file(), name
    assert "best val loss" in out and "speed fastgd/torch" in out
    assert "sample from the fastgd run" in out


def test_interpret_backend_restarts_under_the_interpreter(tmp_path, toy_folder):
    """TRITON_INTERPRET must be set before triton is imported, which ``import fastgd`` does:
    the command restarts itself with it. Run from a process that does not interpret."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "fastgd.demo", "--backend", "interpret", "--data", toy_folder,
         "--out", str(tmp_path), "--sample-bytes", "0", *TINY, "--steps", "2"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fastgd backend: interpreter" in done.stdout, done.stdout


def test_bad_option_from_a_shell_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "fastgd.demo", "--lr=-3e-4"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("fastgd demo: error: --lr -0.0003: the learning rate must "
                                   "be > 0")


def test_interpreter_preset_fills_only_options_not_given():
    cfg = cli.parse(["--steps", "7", "--warmup", "2"], interpreting=True)
    assert cfg.steps == 7 and cfg.dim == 64 and cfg.context == 64  # preset, except --steps
    assert cli.parse([], interpreting=False).dim == 128


def test_stdlib_corpus_is_deterministic_and_split_by_file():
    a, b = data.load_corpus(None), data.load_corpus(None)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.n_val_files >= 1 and a.n_train_files > 5 * a.n_val_files
    assert a.val.numel() > 10_000  # enough held-out text for the default evaluation
    # Split by file: a long line of held-out code does not occur in the training text.
    held_out_line = max(bytes(a.val[:4000].tolist()).split(b"\n"), key=len)
    assert len(held_out_line) > 40 and held_out_line not in bytes(a.train.tolist())


def test_single_file_holds_out_its_last_tenth(tmp_path):
    text = "".join(f"line {i}\n" for i in range(500))
    (tmp_path / "one.txt").write_text(text)
    corpus = data.load_corpus(str(tmp_path / "one.txt"))
    joined = bytes(corpus.train.tolist()) + bytes(corpus.val.tolist())
    assert joined == text.encode() and corpus.val.numel() == len(text) // 10


def test_ctrl_c_in_compare_then_resume_finishes_both_runs(capsys, monkeypatch, tmp_path,
                                                          toy_folder):
    """Ctrl-C during the fastgd run: exit 130 and a checkpoint; ``--resume`` then finishes the
    fastgd run and runs the torch run it never started."""
    import signal

    from fastgd.demo import app
    from fastgd.demo.report import Silent

    class CtrlCAtStep3(Silent):
        steps = 0

        def advance(self):
            CtrlCAtStep3.steps += 1
            if CtrlCAtStep3.steps == 3:
                signal.raise_signal(signal.SIGINT)

    argv = ["--data", toy_folder, "--out", str(tmp_path), "--compare", "--backend", "torch",
            "--sample-bytes", "0", *TINY]
    monkeypatch.setattr(app, "make_reporter", lambda *a: CtrlCAtStep3())
    assert cli.main(argv) == 130
    assert "--resume" in capsys.readouterr().out
    assert not (tmp_path / "torch").exists()
    assert torch.load(tmp_path / "fastgd" / "last.pt", weights_only=True)["step"] == 3

    monkeypatch.undo()
    assert cli.main([*argv, "--resume"]) == 0
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    fast = [float(r["train_loss"]) for r in rows if r["run"] == "fastgd" and r["train_loss"]]
    ref = [float(r["train_loss"]) for r in rows if r["run"] == "torch" and r["train_loss"]]
    assert len(fast) == len(ref) == 4
    assert max(abs(a - b) for a, b in zip(fast, ref)) <= TRAINING_CURVE_ATOL[torch.float32]
