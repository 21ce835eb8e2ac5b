"""One training run of the demo: batches, loss, backward, optimizer step, learning-rate schedule,
held-out evaluation, early stopping, checkpoints -- for either stack of :mod:`.recipe`.

A loss that is not finite (nan or inf: the run diverged) stops the run. It is looked for where
the loop reads the loss anyway -- each logged row (the mean of the steps since the previous one,
which is non-finite when any of them was) and each evaluation -- so training adds no host sync
per step. No checkpoint is written after a non-finite loss: ``best.pt`` and ``last.pt`` keep the
last finite state.

Under ``--fsdp`` (a :class:`~.parallel.Parallel` given) the model is sharded with FSDP2, each rank
trains on its rows of the global batch, the logged losses are summed across ranks, and no
checkpoint is written (nor resumed from).
"""
from __future__ import annotations

import contextlib
import math
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
from .parallel import Parallel, shard_eval_windows
from .stop import StopRequest


@dataclass
class RunResult:
    stack: str
    tracker: Tracker
    model: TinyGPT  # with the best checkpoint's weights loaded (the last weights under --fsdp)
    steps_done: int
    tokens_per_s: float  # training tokens per second of training time (evaluations excluded)
    wall_time_s: float  # this session's time, evaluations and checkpoints included
    peak_memory: Optional[int]  # bytes; None when not measurable
    memory_kind: str  # what peak_memory measures
    backend: str  # the fastgd backend that ran ("torch" for the torch stack's own ops)
    stopped_early: bool
    interrupted: bool
    diverged: Optional[str] = None  # one line: what was not finite, and what was kept


def run_dir(cfg: Config, stack: str) -> Path:
    return Path(cfg.out) / stack


def train(cfg: Config, stack: str, corpus: data.Corpus, device: torch.device,
          reporter, stop: Optional[StopRequest] = None,
          parallel: Optional[Parallel] = None) -> RunResult:
    """Train ``stack``'s run of ``cfg`` (resuming it when ``cfg.resume``); stops at
    ``cfg.steps``, on early stopping, at the step boundary after Ctrl-C or SIGTERM (under
    ``parallel``: at the next logged step, which all ranks agree on), or at the first logged
    loss that is not finite."""
    forced = fastgd.force_backend("torch") if cfg.backend == "torch" else contextlib.nullcontext()
    with forced:
        return _Run(cfg, stack, corpus, device, reporter, stop or StopRequest(),
                    parallel).loop()


class _Run:
    def __init__(self, cfg, stack, corpus, device, reporter, stop, parallel=None) -> None:
        self.wall_start = time.perf_counter()
        self.cfg, self.stack, self.corpus, self.device = cfg, stack, corpus, device
        self.reporter, self.stop, self.parallel = reporter, stop, parallel
        # Same initial weights and dropout masks for both stacks -- and on every rank, so the
        # sharded model starts from the weights of a one-process run.
        torch.manual_seed(cfg.seed)
        self.model = TinyGPT(data.VOCAB_SIZE, cfg.context, cfg.dim, cfg.layers, cfg.heads,
                             cfg.dropout).to(device)
        if parallel is not None:
            parallel.shard(self.model)  # before the optimizer: it must hold the DTensors
        self.update = recipe.make_update(stack, self.model, cfg.lr, cfg.weight_decay,
                                         cfg.max_grad_norm)
        self.schedule = recipe.make_schedule(self.update.optimizer, cfg.warmup_steps, cfg.steps)
        self.loss_fn = recipe.make_loss(stack, cfg.label_smoothing, cfg.z_loss, cfg.fused_linear)
        # Validation measures plain cross-entropy, whatever the training loss adds.
        self.eval_loss_fn = recipe.make_loss(stack, 0.0, 0.0, cfg.fused_linear)
        self.tracker = Tracker(stack, cfg.patience)
        self.out = run_dir(cfg, stack)
        self.autocast = _autocast(cfg, device)
        starts = data.eval_starts(corpus.val, cfg.eval_sequences, cfg.context)
        val_x, val_y = data.windows(corpus.val, starts, cfg.context)
        self.val_count = torch.tensor(val_y.numel(), device=device)  # all ranks' targets
        self.val_x, self.val_y = (t.to(device) for t in shard_eval_windows(val_x, val_y,
                                                                            parallel))
        self.world_size = parallel.world_size if parallel else 1
        self.stop_agreed = False  # under --fsdp: a stop all ranks saw at the last logged step
        self.loss_sum = torch.zeros((), device=device)  # training losses since the last row
        self.steps_in_sum = 0
        self.saved_at: Optional[int] = None  # the step last.pt holds
        self.diverged: Optional[str] = None  # what was not finite, once something was
        self.step = self._resume() if cfg.resume else self._fresh()
        self.train_time = self.tracker.rows[-1].elapsed_s if self.tracker.rows else 0.0
        self.session_tokens, self.session_time = 0, 0.0

    def _fresh(self) -> int:
        # A fresh run must not report or sample a previous run's checkpoints.
        for name in ("best.pt", "last.pt"):
            (self.out / name).unlink(missing_ok=True)
        return 0

    def _resume(self) -> int:
        state = checkpoint.load(self.out / "last.pt", self.cfg, self.stack)
        if (self.out / "best.pt").is_file():  # read at the end: a bad one must stop us now
            checkpoint.load(self.out / "best.pt", self.cfg, self.stack)
        self.model.load_state_dict(state["model"])
        self.update.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.tracker.load_state_dict(state["tracker"])
        self.loss_sum = state["running_loss"]["sum"].to(self.device)
        self.steps_in_sum = state["running_loss"]["steps"]
        checkpoint.restore_rng(state)
        self.saved_at = state["step"]
        return state["step"]

    def loop(self) -> RunResult:
        cfg, stopped_early, interrupted = self.cfg, False, False
        _reset_peak_memory(self.device)
        self.reporter.start(self.stack, cfg.steps, self.step)
        if self.step == 0:  # the untrained model's loss: where the curves start
            self._evaluate(self.tracker.log(step=0, tokens=0, elapsed_s=0.0,
                                            lr=self.schedule.get_last_lr()[0]))
        self.model.train()
        tick = time.perf_counter()
        while self.step < cfg.steps:
            if self.tracker.should_stop:
                stopped_early = True
                break
            if self.stop.requested if self.parallel is None else self.stop_agreed:
                interrupted = True
                break
            grad_norm = self._train_step()
            is_log = self.step % cfg.log_every == 0 or self.step == cfg.steps
            is_eval = self.step % cfg.eval_every == 0 or self.step == cfg.steps
            if is_log or is_eval:
                _synchronize(self.device)
                now = time.perf_counter()
                self.train_time += now - tick
                self.session_time += now - tick
                row = self._log(grad_norm)
                if is_eval and not self.diverged:
                    self._evaluate(row)
                if self.diverged:
                    break
                tick = time.perf_counter()
        if interrupted and self.parallel is None:  # under --fsdp a stop follows a logged step
            self._check_unlogged_steps()
        if not self.diverged and (self.saved_at != self.step or interrupted):
            self._save("last.pt")
        self.reporter.close()
        return self._result(stopped_early or self.tracker.should_stop, interrupted)

    def _train_step(self) -> Optional[torch.Tensor]:
        """One optimizer step over ``accum`` micro-batches; returns the gradient norm."""
        cfg = self.cfg
        x, y = data.train_batch(self.corpus.train, self.step, cfg.seed,
                                cfg.batch_size * cfg.accum, cfg.context)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        num_items = (y != -100).sum()  # tokens of the whole accumulated batch, on the device
        if self.parallel is not None:
            x, y = self.parallel.rows(x), self.parallel.rows(y)
            # FSDP averages the ranks' gradients: normalised by a world_size-th of the global
            # count, their mean is the gradient of the global batch's mean loss.
            num_items = num_items / self.world_size
        for xm, ym in zip(x.chunk(cfg.accum), y.chunk(cfg.accum)):
            with self.autocast:
                loss = self.loss_fn(self.model(xm), self.model.head_weight, ym, num_items)
            loss.backward()
            self.loss_sum += loss.detach()
        grad_norm = self.update.step()
        self.schedule.step()
        self.step += 1
        self.steps_in_sum += 1
        self.session_tokens += cfg.tokens_per_step
        self.reporter.advance()
        return grad_norm

    def _log(self, grad_norm: Optional[torch.Tensor]):
        row = self.tracker.log(
            step=self.step, tokens=self.step * self.cfg.tokens_per_step,
            elapsed_s=self.train_time, lr=self.schedule.get_last_lr()[0],
            train_loss=self._mean_train_loss(),
            grad_norm=float(grad_norm) if grad_norm is not None else None)
        self.loss_sum.zero_()
        self.steps_in_sum = 0
        self.reporter.logged(row)
        if not math.isfinite(row.train_loss):
            self._diverge(f"the mean training loss of the steps up to {self.step} is "
                          f"{row.train_loss}")
        return row

    def _mean_train_loss(self) -> float:
        """The mean training loss since the last row (read here only: one sync per row). Under
        --fsdp the ranks' sums and stop requests travel in one all-reduce: every rank then
        stops at the same step, as the collectives of FSDP need."""
        if self.parallel is None:
            return (self.loss_sum / self.steps_in_sum).item()
        stop = torch.tensor(float(self.stop.requested), device=self.device)
        loss_sum, stops = self.parallel.sum(torch.stack([self.loss_sum, stop])).tolist()
        self.stop_agreed = stops > 0
        return loss_sum / self.world_size / self.steps_in_sum

    def _check_unlogged_steps(self) -> None:
        """Before a checkpoint between logged rows: the losses not logged yet, and the weights
        the last update wrote (read once, when stopping)."""
        finite = torch.stack([self.loss_sum.isfinite(),
                              *(p.isfinite().all() for p in self.model.parameters())]).all()
        if not finite.item():
            self._diverge(f"a training loss or a weight is not finite at step {self.step}")

    def _diverge(self, what: str) -> None:
        kept = (f"best.pt (step {self.tracker.best_step}, val loss "
                f"{self.tracker.best_val:.4f}) and last.pt (step {self.saved_at}) are kept"
                if self.saved_at is not None else "no checkpoint was written")
        self.diverged = (f"the {self.stack} run diverged: {what}; stopped there. {kept}. Try a "
                         f"lower --lr or a longer --warmup, with --overwrite to start over")

    def _evaluate(self, row) -> None:
        """Validation loss into ``row``; checkpoints: ``best.pt`` on a new best, ``last.pt``."""
        total = evaluation_sum(self.model, self.eval_loss_fn, self.val_x, self.val_y,
                               self.val_count, self.cfg.batch_size // self.world_size,
                               self.autocast)
        if self.parallel is not None:  # each rank summed its windows over all ranks' count
            total = self.parallel.sum(total)
        row.val_loss = total.item()
        if not math.isfinite(row.val_loss):
            self._diverge(f"the validation loss at step {self.step} is {row.val_loss}")
            self.reporter.evaluated(row, False)
            return
        is_best = self.tracker.evaluated(row.val_loss)
        if is_best:
            self._save("best.pt")
        self._save("last.pt")
        self.reporter.evaluated(row, is_best, saved=self.parallel is None)

    def _save(self, name: str) -> None:
        if self.parallel is not None:  # --fsdp writes no checkpoints (the CLI says so)
            return
        checkpoint.save(self.out / name, cfg=self.cfg, stack=self.stack, step=self.step,
                        model=self.model, optimizer=self.update.optimizer,
                        schedule=self.schedule, tracker=self.tracker,
                        running_loss={"sum": self.loss_sum, "steps": self.steps_in_sum})
        if name == "last.pt":
            self.saved_at = self.step

    def _result(self, stopped_early: bool, interrupted: bool) -> RunResult:
        best = self.out / "best.pt"
        if self.parallel is None and best.is_file():
            state = checkpoint.load(best, self.cfg, self.stack, map_location=self.device)
            self.model.load_state_dict(state["model"])
        peak, memory_kind = _peak_memory(self.device)
        probe = self.val_y.new_empty(0)
        return RunResult(
            stack=self.stack, tracker=self.tracker, model=self.model, steps_done=self.step,
            tokens_per_s=self.session_tokens / self.session_time if self.session_time else 0.0,
            wall_time_s=time.perf_counter() - self.wall_start, peak_memory=peak,
            memory_kind=memory_kind,
            backend=fastgd.backend.backend_for(probe) if self.stack == "fastgd" else "torch",
            stopped_early=stopped_early, interrupted=interrupted, diverged=self.diverged)


def evaluate(model, loss_fn, val_x, val_y, batch_size, autocast) -> float:
    """Mean cross-entropy (nats per byte) over the fixed validation windows."""
    count = torch.tensor(val_y.numel(), device=val_y.device)
    return evaluation_sum(model, loss_fn, val_x, val_y, count, batch_size, autocast).item()


@torch.no_grad()
def evaluation_sum(model, loss_fn, val_x, val_y, count, batch_size, autocast) -> torch.Tensor:
    """The cross-entropy of these windows summed and divided by ``count`` (a device tensor, no
    sync): the mean when they are all the windows, one rank's part of it under --fsdp."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=val_y.device)
    for start in range(0, val_x.shape[0], batch_size):
        with autocast:
            hidden = model(val_x[start:start + batch_size])
            total += loss_fn(hidden, model.head_weight, val_y[start:start + batch_size], count)
    model.train(was_training)
    return total


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def uses_bf16(cfg: Config, device: torch.device) -> bool:
    # bfloat16 autocast where it pays (GPUs); float32 on CPUs, where bf16 matmuls are slow.
    return cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")


def _autocast(cfg: Config, device: torch.device):
    if not uses_bf16(cfg, device):
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
