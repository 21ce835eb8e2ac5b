"""One training run of the demo: batches, loss, backward, optimizer step, learning-rate schedule,
held-out evaluation, early stopping, checkpoints -- for either stack of :mod:`.recipe`."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import fastgd

from . import checkpoint, data, recipe
from .config import Config
from .metrics import Tracker
from .model import TinyGPT


@dataclass
class RunResult:
    stack: str
    tracker: Tracker
    model: TinyGPT  # with the best checkpoint's weights loaded
    steps_done: int
    tokens_per_s: float  # training tokens per second of training time (evaluations excluded)
    wall_time_s: float  # this session's time, evaluations and checkpoints included
    peak_memory: Optional[int]  # bytes; None when not measurable
    memory_kind: str  # what peak_memory measures
    backend: str  # the fastgd backend that ran ("torch" for the torch stack's own ops)
    stopped_early: bool
    interrupted: bool


class StopRequest:
    """Ctrl-C asks the loop to stop at the next step boundary (a second Ctrl-C stops at once), so
    the checkpoint it saves describes whole steps."""

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def catching_ctrl_c(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def run_dir(cfg: Config, stack: str) -> Path:
    return Path(cfg.out) / stack


def train(cfg: Config, stack: str, corpus: data.Corpus, device: torch.device,
          reporter, stop: Optional[StopRequest] = None) -> RunResult:
    stop = stop or StopRequest()
    forced = fastgd.force_backend("torch") if cfg.backend == "torch" else contextlib.nullcontext()
    with forced:
        return _train(cfg, stack, corpus, device, reporter, stop)


def _train(cfg, stack, corpus, device, reporter, stop) -> RunResult:
    wall_start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # same initial weights and dropout masks for both stacks
    model = TinyGPT(data.VOCAB_SIZE, cfg.context, cfg.dim, cfg.layers, cfg.heads,
                    cfg.dropout).to(device)
    update = recipe.make_update(stack, model, cfg.lr, cfg.weight_decay, cfg.max_grad_norm)
    schedule = recipe.make_schedule(update.optimizer, cfg.warmup, cfg.steps)
    loss_fn = recipe.make_loss(stack, cfg.label_smoothing, cfg.z_loss, cfg.fused_linear)
    eval_loss_fn = recipe.make_loss(stack, 0.0, 0.0, cfg.fused_linear)
    tracker = Tracker(stack, cfg.patience)
    out = run_dir(cfg, stack)
    start_step = 0
    if not cfg.resume:  # a fresh run must not report or sample a previous run's checkpoints
        for name in ("best.pt", "last.pt"):
            (out / name).unlink(missing_ok=True)
    else:
        state = checkpoint.load(out / "last.pt", cfg, stack)
        model.load_state_dict(state["model"])
        update.optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        tracker.load_state_dict(state["tracker"])
        checkpoint.restore_rng(state)
        start_step = state["step"]

    def save(name: str, step: int) -> None:
        checkpoint.save(out / name, cfg=cfg, stack=stack, step=step, model=model,
                        optimizer=update.optimizer, schedule=schedule, tracker=tracker)

    val_x, val_y = data.windows(corpus.val, data.eval_starts(corpus.val, cfg.eval_sequences,
                                                             cfg.context), cfg.context)
    val_x, val_y = val_x.to(device), val_y.to(device)
    autocast = _autocast(cfg, device)
    _reset_peak_memory(device)

    train_time = tracker.rows[-1].elapsed_s if tracker.rows else 0.0
    step, saved_at, stopped_early, interrupted = start_step, None, False, False
    loss_sum = torch.zeros((), device=device)
    steps_in_sum, session_tokens, session_train_time = 0, 0, 0.0
    reporter.start(stack, cfg.steps, start_step)
    model.train()
    tick = time.perf_counter()
    while step < cfg.steps:
        if tracker.should_stop:
            stopped_early = True
            break
        if stop.requested:
            interrupted = True
            break
        x, y = data.train_batch(corpus.train, step, cfg.seed, cfg.batch_size * cfg.accum,
                                cfg.context)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        num_items = (y != -100).sum()  # tokens of the whole accumulated batch, on the device
        for xm, ym in zip(x.chunk(cfg.accum), y.chunk(cfg.accum)):
            with autocast:
                loss = loss_fn(model(xm), model.head_weight, ym, num_items)
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = update.step()
        schedule.step()
        step += 1
        steps_in_sum += 1
        session_tokens += cfg.tokens_per_step
        reporter.advance()

        is_log = step % cfg.log_every == 0 or step == cfg.steps
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if not (is_log or is_eval):
            continue
        _synchronize(device)
        now = time.perf_counter()
        train_time += now - tick
        session_train_time += now - tick
        row = tracker.log(step=step, tokens=step * cfg.tokens_per_step, elapsed_s=train_time,
                          lr=schedule.get_last_lr()[0],
                          train_loss=(loss_sum / steps_in_sum).item(),
                          grad_norm=float(grad_norm) if grad_norm is not None else float("nan"))
        loss_sum.zero_()
        steps_in_sum = 0
        reporter.logged(row)
        if is_eval:
            row.val_loss = evaluate(model, eval_loss_fn, val_x, val_y, cfg.batch_size, autocast)
            is_best = tracker.evaluated(row.val_loss)
            if is_best:
                save("best.pt", step)
            save("last.pt", step)
            saved_at = step
            reporter.evaluated(row, is_best)
        tick = time.perf_counter()

    if saved_at != step or interrupted:
        save("last.pt", step)
    reporter.close()
    if (out / "best.pt").is_file():
        model.load_state_dict(torch.load(out / "best.pt", map_location=device,
                                         weights_only=False)["model"])
    peak, memory_kind = _peak_memory(device)
    return RunResult(
        stack=stack, tracker=tracker, model=model, steps_done=step,
        tokens_per_s=session_tokens / session_train_time if session_train_time else 0.0,
        wall_time_s=time.perf_counter() - wall_start, peak_memory=peak, memory_kind=memory_kind,
        backend=fastgd.backend.backend_for(val_y.new_empty(0)) if stack == "fastgd" else "torch",
        stopped_early=stopped_early or tracker.should_stop, interrupted=interrupted)


@torch.no_grad()
def evaluate(model, loss_fn, val_x, val_y, batch_size, autocast) -> float:
    """Mean cross-entropy (nats per byte) over the fixed validation windows."""
    was_training = model.training
    model.eval()
    count = torch.tensor(val_y.numel(), device=val_y.device)
    total = torch.zeros((), device=val_y.device)
    for start in range(0, val_x.shape[0], batch_size):
        with autocast:
            hidden = model(val_x[start:start + batch_size])
            total += loss_fn(hidden, model.head_weight, val_y[start:start + batch_size], count)
    model.train(was_training)
    return total.item()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(cfg: Config, device: torch.device):
    # bfloat16 autocast where it pays (GPUs); float32 on CPUs, where bf16 matmuls are slow.
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[Optional[int], str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "peak GPU memory allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None, "peak memory (not measured here)"
    # ru_maxrss is in KiB on Linux and the high-water mark of the whole process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS of the process"
