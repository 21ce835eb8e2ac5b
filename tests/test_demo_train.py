"""The demo's training loop on a tiny configuration: it learns, the fastgd and torch stacks give
the same curves, gradient accumulation is normalised by the whole batch, a run interrupted with
Ctrl-C resumes into the same run, and early stopping stops and keeps the best checkpoint.

Tiny on purpose: the suite runs the kernels interpreted on 2 CPU cores (one kernel program per
token row), so each run here is a few dozen steps of 64 tokens.
"""
from __future__ import annotations

import math
import signal

import pytest
import torch

import fastgd
from fastgd.demo import data
from fastgd.demo.config import Config
from fastgd.demo.report import Silent, max_curve_gap
from fastgd.demo.stop import StopRequest
from fastgd.demo.train import train
from tolerances import TRAINING_CURVE_ATOL


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops take microseconds: with two threads on a busy 2-core machine their
    synchronisation costs 100x more than the work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _write_corpus(folder, texts: dict[str, str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text)
    return str(folder)


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> str:
    """Six files of the same simple language (so the held-out file is learnable), generated from
    a fixed seed."""
    rng = torch.Generator().manual_seed(1234)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "self", "value", "(", ")", ":"]
    texts = {}
    for i in range(6):
        picks = torch.randint(0, len(words), (300,), generator=rng).tolist()
        texts[f"part{i}.txt"] = " ".join(words[j] for j in picks) + "\n"
    return _write_corpus(tmp_path_factory.mktemp("toy"), texts)


def tiny(tmp_path, data_path, **changes) -> Config:
    base = dict(data=data_path, context=16, layers=1, dim=32, heads=2, steps=10, batch_size=4,
                lr=1e-2, warmup=2, eval_every=5, eval_sequences=4, patience=0, log_every=1,
                dtype="float32",  # no bf16 autocast on a GPU: the curve tolerance is fp32's
                out=str(tmp_path / "out"), progress=False, sample_bytes=0)
    return Config(**{**base, **changes})


def _run(cfg: Config, stack: str = "fastgd", reporter=None, stop=None, device: str = "cpu"):
    corpus = data.load_corpus(cfg.data)
    return train(cfg, stack, corpus, torch.device(device), reporter or Silent(), stop)


# auto: the Triton kernels (compiled on a GPU, interpreted on a CPU)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_validation_loss_decreases(tmp_path, toy_corpus, backend, device):
    result = _run(tiny(tmp_path, toy_corpus, backend=backend), device=device)
    steps, val = result.tracker.curve("val_loss")
    assert steps == [0, 5, 10]
    # Untrained (small initial weights), a byte model is near uniform: ln(256) = 5.55 nats. The
    # toy language has ~11 words: a few steps get well below that, and keep improving.
    assert val[0] == pytest.approx(math.log(256), abs=0.05)
    assert val[2] < val[1] < val[0] - 0.3, f"validation loss did not decrease: {val}"
    assert result.steps_done == 10 and not result.stopped_early
    expected = ("torch" if backend == "torch"
                else fastgd.backend.backend_for(torch.empty(0, device=device)))
    assert result.backend == expected


def test_compare_curves_match(tmp_path, toy_corpus, device):
    """fastgd's loss and optimizer against torch's F.cross_entropy + AdamW, with every loss
    extra the demo exposes switched on (label smoothing, z-loss, accumulation, clipping)."""
    cfg = tiny(tmp_path, toy_corpus, steps=6, eval_every=3, label_smoothing=0.1, z_loss=1e-3,
               accum=2, batch_size=2, max_grad_norm=0.5)
    fast, ref = _run(cfg, "fastgd", device=device), _run(cfg, "torch", device=device)
    gap = max_curve_gap(fast.tracker, ref.tracker)
    assert gap <= TRAINING_CURVE_ATOL[torch.float32], f"curves differ by {gap:.3e}"
    assert len(fast.tracker.curve("train_loss")[1]) == 6  # every step logged and compared


def test_accumulation_is_normalised_by_the_whole_batch(tmp_path, toy_corpus):
    """Two micro-batches of 2 must train exactly like one batch of 4 (the same sequences): each
    micro-batch's summed loss is divided by the token count of both."""
    one = _run(tiny(tmp_path / "a", toy_corpus, steps=4, batch_size=4, accum=1, backend="torch"))
    two = _run(tiny(tmp_path / "b", toy_corpus, steps=4, batch_size=2, accum=2, backend="torch"))
    (_, first_one), (_, first_two) = one.tracker.curve("train_loss"), two.tracker.curve("train_loss")
    # Step 1's loss is measured before any update: the mean over the same 64 tokens.
    assert first_two[0] == pytest.approx(first_one[0], rel=1e-6)
    assert max_curve_gap(one.tracker, two.tracker) <= TRAINING_CURVE_ATOL[torch.float32]


class _CtrlCAt(Silent):
    """Presses Ctrl-C (a real SIGINT) right after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.steps = at, 0

    def advance(self) -> None:
        self.steps += 1
        if self.steps == self.at:
            signal.raise_signal(signal.SIGINT)


# The checkpoint logic is the same on every backend: the PyTorch path keeps these tests fast.
def test_ctrl_c_then_resume_continues_the_same_run(tmp_path, toy_corpus):
    # dropout: the RNG state must be saved and restored too
    options = dict(steps=8, eval_every=4, dropout=0.1, backend="torch")
    cfg = tiny(tmp_path, toy_corpus, **options)
    straight = _run(tiny(tmp_path / "straight", toy_corpus, **options))

    stop = StopRequest()
    with stop.catching_signals():
        first = _run(cfg, reporter=_CtrlCAt(5), stop=stop)
    assert first.interrupted and first.steps_done == 5
    saved = torch.load(tmp_path / "out" / "fastgd" / "last.pt", weights_only=True)
    assert saved["step"] == 5

    resumed = _run(tiny(tmp_path, toy_corpus, resume=True, **options))
    assert resumed.steps_done == 8
    for column in ("train_loss", "val_loss", "lr"):
        assert resumed.tracker.curve(column) == straight.tracker.curve(column), column
    end = torch.load(tmp_path / "out" / "fastgd" / "last.pt", weights_only=True)["model"]
    ref = torch.load(tmp_path / "straight" / "out" / "fastgd" / "last.pt",
                     weights_only=True)["model"]
    for name in ref:
        assert torch.equal(end[name], ref[name]), name


def test_early_stopping_stops_and_keeps_the_best(tmp_path):
    """Train on one language, validate on another: after the first evaluation the model only
    gets worse on held-out text, so patience 2 stops at the third evaluation."""
    folder = _write_corpus(tmp_path / "mismatch", {
        "a_train.txt": "abcabcabc abc cab bca " * 40,
        "b_train.txt": "cab abc bca abcabc " * 40,
        "z_val.txt": "xyz zyx yxz zzz " * 20,
    })
    # The split is by a hash of the file name; with three files z_val.txt must be the held-out
    # one for this test to mean anything.
    corpus = data.load_corpus(folder)
    assert b"xyz" in bytes(corpus.val.tolist()) and b"xyz" not in bytes(corpus.train.tolist())
    cfg = tiny(tmp_path, folder, steps=40, eval_every=2, patience=2, lr=2e-2, backend="torch")
    result = _run(cfg)
    steps, val = result.tracker.curve("val_loss")
    best_step = result.tracker.best_step
    assert result.stopped_early and result.steps_done < 10, (steps, val)
    # Stopped exactly `patience` evaluations after the best, each of them worse.
    assert result.steps_done == best_step + 2 * 2
    assert all(v > result.tracker.best_val for s, v in zip(steps, val) if s > best_step)
    best = torch.load(tmp_path / "out" / "fastgd" / "best.pt", weights_only=True)
    assert best["step"] == best_step
    for name, tensor in result.model.state_dict().items():  # the best weights are returned
        assert torch.equal(tensor, best["model"][name]), name
