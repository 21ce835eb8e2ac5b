"""The demo's settings: one dataclass, its defaults (and the ones that follow other options), the
smaller preset used when the Triton kernels run through the interpreter, and the checks that turn
bad values into one-line errors."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional


class ConfigError(ValueError):
    """A bad option (the CLI prints it as one line)."""


class Diverged(Exception):
    """A run's loss stopped being finite (the CLI prints it as one line, after the metrics, the
    plot and the summary were written)."""


@dataclass
class Config:
    # data
    data: Optional[str] = None  # None: a sample of the Python standard library's sources
    context: int = 128
    # model
    layers: int = 4
    dim: int = 128
    heads: int = 4
    dropout: float = 0.0
    # optimisation
    steps: int = 600
    batch_size: int = 16
    accum: int = 1
    lr: float = 3e-3
    warmup: Optional[int] = None  # None: follows --steps, see warmup_steps
    weight_decay: float = 0.1
    max_grad_norm: Optional[float] = 1.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    fused_linear: bool = False
    # evaluation and stopping
    eval_every: int = 50
    eval_sequences: int = 128
    patience: int = 3
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    out: str = "fastgd-demo"
    resume: bool = False
    overwrite: bool = False  # replace the run already in --out (without it, refuse)
    compare: bool = False
    fsdp: bool = False  # data parallel with FSDP2, one process per device, under torchrun
    log_every: int = 10
    sample_bytes: int = 300
    progress: bool = True

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.accum * self.context

    @property
    def warmup_steps(self) -> int:
        """--warmup, or by default a tenth of --steps up to WARMUP_MAX: a fixed default would
        refuse every --steps below it."""
        if self.warmup is not None:
            return self.warmup
        return min(WARMUP_MAX, self.steps // 10)


WARMUP_MAX = 40
SEED_LIMIT = 2**64  # torch's generators take seeds in [0, 2**64)


# Through the interpreter the loss costs a few milliseconds per token (one kernel program per
# token row, forward and backward): a smaller model, batch and run keep it to a few minutes.
INTERPRETER_PRESET = dict(steps=60, batch_size=4, context=64, layers=2, dim=64, heads=4,
                          eval_every=20, eval_sequences=16)


def resume_identity(cfg: Config) -> dict:
    """The options a checkpoint can only be resumed with, by flag: those that shape the model,
    the data stream or the schedule (the warmup as resolved, given or not), and those the
    optimizer's saved state would silently override (its param groups keep lr, weight decay and
    fastgd's max_grad_norm)."""
    return {"--data": cfg.data, "--context": cfg.context, "--layers": cfg.layers,
            "--dim": cfg.dim, "--heads": cfg.heads, "--seed": cfg.seed,
            "--batch-size": cfg.batch_size, "--accum": cfg.accum, "--steps": cfg.steps,
            "--warmup": cfg.warmup_steps, "--lr": cfg.lr, "--weight-decay": cfg.weight_decay,
            "--max-grad-norm": cfg.max_grad_norm}


DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
BACKENDS = ("auto", "torch", "interpret")


def with_overrides(base: Config, **changes) -> Config:
    return dataclasses.replace(base, **changes)


def check(cfg: Config) -> None:
    """Raise :class:`ConfigError` naming the first bad option and what to do instead."""
    _positive(cfg, "steps", "batch_size", "accum", "context", "layers", "dim", "heads",
              "eval_every", "eval_sequences", "log_every")
    _finite(cfg, "lr", "weight_decay", "z_loss", "dropout", "label_smoothing", "max_grad_norm")
    _at_least(cfg, 0, "weight_decay", "z_loss", "patience", "sample_bytes", "seed")
    if cfg.seed >= SEED_LIMIT:
        raise ConfigError(f"--seed {cfg.seed}: must be below 2**64 = {SEED_LIMIT}")
    if not cfg.lr > 0:
        raise ConfigError(f"--lr {cfg.lr}: the learning rate must be > 0")
    if cfg.dim % cfg.heads:
        raise ConfigError(f"--dim {cfg.dim} is not divisible by --heads {cfg.heads}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"--dropout {cfg.dropout}: must be in [0, 1)")
    if not 0.0 <= cfg.label_smoothing <= 1.0:
        raise ConfigError(f"--label-smoothing {cfg.label_smoothing}: must be in [0, 1]")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ConfigError(f"--max-grad-norm {cfg.max_grad_norm}: must be > 0 (or 'none' to "
                          f"disable clipping)")
    if cfg.warmup is not None:
        _at_least(cfg, 0, "warmup")
        if cfg.warmup >= cfg.steps:
            raise ConfigError(f"--warmup {cfg.warmup} must be smaller than --steps {cfg.steps}")
    if cfg.fsdp and cfg.resume:
        raise ConfigError("--fsdp writes no checkpoints, so there is nothing to --resume; train "
                          "without --fsdp to get resumable checkpoints")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --out, --overwrite replaces it: pass "
                          "one of them")
    for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("backend", BACKENDS)):
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name} {getattr(cfg, name)}: expected one of {allowed}")
    if cfg.backend == "interpret" and cfg.device == "cuda":
        raise ConfigError("--backend interpret runs the kernels on CPU tensors: use --device cpu "
                          "(or auto)")


def _positive(cfg: Config, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{_flag(name)} {getattr(cfg, name)}: must be > 0")


def _finite(cfg: Config, *names: str) -> None:
    """inf and nan parse as floats but are never meant (and nan passes no comparison)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"--{_flag(name)} {value}: must be a finite number")


def _at_least(cfg: Config, low: float, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) >= low:
            raise ConfigError(f"--{_flag(name)} {getattr(cfg, name)}: must be >= {low}")


def _flag(name: str) -> str:
    return name.replace("_", "-")
