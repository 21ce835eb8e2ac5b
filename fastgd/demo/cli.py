"""Command line of the demo: ``python -m fastgd.demo [options]`` or ``fastgd demo [options]``.

Whatever goes wrong ends in one line on stderr, never a traceback; the exit statuses are
:data:`EXIT_STATUSES` (which ``--help`` prints).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from . import config as config_module
from .config import (BACKENDS, DEVICES, DTYPES, INTERPRETER_PRESET, WARMUP_MAX, Config,
                     ConfigError, Diverged)

PROG = "fastgd demo"
DIVERGED_STATUS = 3
EXIT_STATUSES = (
    "exit status: 0 done (early stop included); 2 a bad option, an --out that already holds a "
    "run (--resume or --overwrite), a checkpoint that cannot be resumed, or a model too big for "
    f"the memory; {DIVERGED_STATUS} the loss became nan or inf (after writing the metrics and the "
    "plot); 130 Ctrl-C, 143 SIGTERM (both stop at a step boundary and save a checkpoint to "
    "--resume from)")
_REEXEC_MARK = "FASTGD_DEMO_REEXEC"


# Options not given stay out of the parsed namespace, so a given value of None (--max-grad-norm
# none) is told apart from an option left to its default.
NOT_GIVEN = argparse.SUPPRESS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block first
        if message.endswith("expected one argument"):
            # argparse reads "-3e-4" as an option, not a value
            message += " (a negative value is written --lr=-3e-4)"
        raise ConfigError(f"{message} (see --help)")


def _grad_norm(text: str) -> Optional[float]:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = _Parser(prog=PROG, argument_default=NOT_GIVEN, description=(
        "Train a small byte-level GPT with fastgd's cross-entropy and AdamW, optionally beside "
        "the same run with torch's. The defaults train for about 75 s on an idle 2-core CPU "
        "(twice that with --compare)."), epilog=EXIT_STATUSES)
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="PATH", help="a text file or a folder of them "
                      "(default: a sample of this Python's standard library sources)")
    data.add_argument("--context", type=int, help=f"bytes per sequence [{d.context}]")
    model = p.add_argument_group("model")
    model.add_argument("--layers", type=int, help=f"transformer blocks [{d.layers}]")
    model.add_argument("--dim", type=int, help=f"model width [{d.dim}]")
    model.add_argument("--heads", type=int, help=f"attention heads [{d.heads}]")
    model.add_argument("--dropout", type=float, help=f"dropout probability [{d.dropout}]")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, help=f"optimizer steps [{d.steps}]")
    opt.add_argument("--batch-size", type=int, help=f"sequences per micro-batch [{d.batch_size}]")
    opt.add_argument("--accum", type=int, help="micro-batches per optimizer step (the loss is "
                     f"normalised by the tokens of all of them) [{d.accum}]")
    opt.add_argument("--lr", type=float, help=f"peak learning rate [{d.lr}]")
    opt.add_argument("--warmup", type=int, help="linear warmup steps, then cosine decay to "
                     f"a tenth of --lr [a tenth of --steps, at most {WARMUP_MAX}]")
    opt.add_argument("--weight-decay", type=float, help="decoupled weight decay on weight "
                     f"matrices [{d.weight_decay}]")
    opt.add_argument("--max-grad-norm", type=_grad_norm, metavar="X|none",
                     help=f"clip the global gradient norm [{d.max_grad_norm}]")
    opt.add_argument("--label-smoothing", type=float, help=f"[{d.label_smoothing}]")
    opt.add_argument("--z-loss", type=float, help=f"weight of logsumexp^2 [{d.z_loss}]")
    opt.add_argument("--fused-linear", action="store_true", default=NOT_GIVEN,
                     help="fastgd run: fuse the output projection into the loss "
                          "(fastgd.linear_cross_entropy)")
    ev = p.add_argument_group("evaluation and stopping")
    ev.add_argument("--eval-every", type=int, help=f"steps between validations [{d.eval_every}]")
    ev.add_argument("--eval-sequences", type=int,
                    help=f"held-out sequences per validation [{d.eval_sequences}]")
    ev.add_argument("--patience", type=int, help="stop after this many validations without "
                    f"a new best; 0 never stops early [{d.patience}]")
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int, help=f"[{d.seed}]")
    run.add_argument("--device", choices=DEVICES, help=f"[{d.device}]")
    run.add_argument("--dtype", choices=DTYPES,
                     help="autocast dtype; auto: bfloat16 on GPUs, float32 on CPUs")
    run.add_argument("--backend", choices=BACKENDS, help="fastgd's backend: auto (compiled "
                     "kernels on GPUs, PyTorch path on CPUs), torch, or interpret (the Triton "
                     "kernels through Triton's interpreter, on a smaller default model)")
    run.add_argument("--out", metavar="DIR", help=f"checkpoints, metrics.csv, demo.png [{d.out}]")
    run.add_argument("--resume", action="store_true", default=NOT_GIVEN,
                     help="continue the run whose checkpoints are in --out")
    run.add_argument("--overwrite", action="store_true", default=NOT_GIVEN,
                     help="replace the run already in --out (without it or --resume, an --out "
                          "that holds a run is refused)")
    run.add_argument("--compare", action="store_true", default=NOT_GIVEN,
                     help="also run torch's cross_entropy + AdamW with the same seed, one plot")
    run.add_argument("--fsdp", action="store_true", default=NOT_GIVEN,
                     help="data parallel with FSDP2, one process per device: launch with "
                          "`torchrun --nproc-per-node N -m fastgd.demo --fsdp` (NCCL on GPUs, "
                          "gloo on CPUs); --batch-size is the global micro-batch, split across "
                          "the processes, so the curves match one process's; only rank 0 prints "
                          "and writes metrics.csv and demo.png; no checkpoints are written")
    run.add_argument("--log-every", type=int, help=f"steps between logged losses [{d.log_every}]")
    run.add_argument("--sample-bytes", type=int,
                     help=f"length of the text sample printed at the end [{d.sample_bytes}]")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=NOT_GIVEN,
                     help="plain lines instead of a progress bar")
    return p


def parse(argv: list[str], interpreting: bool) -> Config:
    """A checked :class:`Config`: defaults, then the interpreter preset (when the kernels will be
    interpreted), then the options given."""
    given = vars(build_parser().parse_args(argv))
    backend = given.get("backend", "auto")
    device = given.get("device", "auto")
    will_interpret = backend == "interpret" or (backend == "auto" and interpreting
                                                and device != "cuda")
    preset = INTERPRETER_PRESET if will_interpret else {}
    cfg = config_module.with_overrides(Config(), **{**preset, **given})
    config_module.check(cfg)
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from fastgd import backend  # imports triton: the interpreter is on or off from here
        cfg = parse(argv, backend.INTERPRETING)
        if cfg.backend == "interpret" and not backend.INTERPRETING:
            _reexec_interpreted(argv, backend.HAS_TRITON)
        from .app import run
        return run(cfg)
    except ConfigError as exc:
        return _fail(exc)
    except OSError as exc:  # e.g. an --out folder that cannot be written
        return _fail(exc)
    except Diverged as exc:
        return _fail(exc, DIVERGED_STATUS)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _fail(exc: Exception, status: int = 2) -> int:
    print(f"{PROG}: error: {exc}", file=sys.stderr)
    return status


def _reexec_interpreted(argv: list[str], has_triton: bool) -> None:
    """TRITON_INTERPRET is read when triton is imported, which ``import fastgd`` already did:
    start this command again in a fresh interpreter with the variable set."""
    if not has_triton:
        raise ConfigError("--backend interpret needs Triton, which is not installed here")
    if os.environ.get(_REEXEC_MARK):
        raise ConfigError("--backend interpret: Triton did not start its interpreter even with "
                          "TRITON_INTERPRET=1; check the triton installation")
    env = {**os.environ, "TRITON_INTERPRET": "1", _REEXEC_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastgd.demo", *argv], env)


def fastgd_command(argv: Optional[list[str]] = None) -> int:
    """The ``fastgd`` console script: ``fastgd demo [options]``, ``fastgd --version``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": main}
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: fastgd {{{','.join(commands)}}} [options]   (fastgd demo --help)\n"
              f"       fastgd --version")
        return 0 if argv else 2
    if argv[0] == "--version":
        import fastgd
        print(f"fastgd {fastgd.__version__}")
        return 0
    if argv[0] not in commands:
        print(f"fastgd: error: unknown command {argv[0]!r}; expected one of {list(commands)}",
              file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
