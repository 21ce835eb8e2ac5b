"""What the demo shows while and after it runs: a progress bar (tqdm when installed, plain lines
otherwise, or nothing), the validation losses, the summary table and the comparison ratios."""
from __future__ import annotations

import math
import sys
from typing import Optional, TextIO

from .metrics import Row


class Reporter:
    """Plain lines at each evaluation; the base of the others."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self._stream = stream
        self.run = ""
        self._previous: Optional[Row] = None

    def start(self, run: str, total: int, initial: int) -> None:
        self.run, self._previous = run, None
        self.say(f"[{run}] training steps {initial}..{total}")

    def advance(self) -> None:
        pass

    def logged(self, row: Row) -> None:
        self._previous = row

    def evaluated(self, row: Row, is_best: bool, saved: bool = True) -> None:
        mark = ("  (best so far, saved)" if saved else "  (best so far)") if is_best else ""
        train = "" if row.train_loss is None else f"  train {row.train_loss:.4f}"
        self.say(f"[{self.run}] step {row.step:5d}{train}  val {row.val_loss:.4f}{mark}")

    def close(self) -> None:
        pass

    @property
    def stream(self) -> TextIO:  # looked up late: sys.stdout may be replaced (tests, notebooks)
        return self._stream or sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def tokens_per_s(self, row: Row) -> float:
        prev = self._previous
        if prev is None or row.elapsed_s <= prev.elapsed_s:
            return row.tokens / row.elapsed_s if row.elapsed_s > 0 else 0.0
        return (row.tokens - prev.tokens) / (row.elapsed_s - prev.elapsed_s)


class Silent(Reporter):
    def say(self, text: str) -> None:
        pass


class ProgressBar(Reporter):
    """A tqdm bar with the loss, learning rate and tokens/s of the last logged steps."""

    def __init__(self, tqdm_class) -> None:
        super().__init__()
        self._tqdm, self._bar = tqdm_class, None

    def start(self, run: str, total: int, initial: int) -> None:
        self.run, self._previous = run, None
        self._bar = self._tqdm(total=total, initial=initial, desc=run, unit="step",
                               file=sys.stderr, dynamic_ncols=True)

    def advance(self) -> None:
        self._bar.update(1)

    def logged(self, row: Row) -> None:
        self._bar.set_postfix_str(f"loss={row.train_loss:.3f} lr={row.lr:.2e} "
                                  f"tok/s={self.tokens_per_s(row):,.0f}", refresh=False)
        self._previous = row

    def close(self) -> None:
        self._bar.close()

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            super().say(text)


def make_reporter(progress: bool, quiet: bool = False) -> Reporter:
    if quiet:
        return Silent()
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return Reporter()
        return ProgressBar(tqdm)
    return Reporter()


def summary_table(results) -> str:
    """The final table: one column per run."""
    lines = [("", [r.stack for r in results]),
             ("best val loss (nats/byte)", [f"{r.tracker.best_val:.4f}" for r in results]),
             ("  at step", [str(r.tracker.best_step) for r in results]),
             ("steps run", [_steps(r) for r in results]),
             ("wall time", [f"{r.wall_time_s:.1f} s" for r in results]),
             ("training tokens/s", [f"{r.tokens_per_s:,.0f}" for r in results]),
             (results[0].memory_kind, [_mib(r.peak_memory) for r in results]),
             ("fastgd backend", [r.backend for r in results])]
    width = max(len(name) for name, _ in lines)
    cols = [max(len(values[i]) for _, values in lines) for i in range(len(results))]
    return "\n".join(
        f"{name:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(values, cols))
        for name, values in lines)


def comparison_lines(fast, ref) -> list[str]:
    """Ratios of the fastgd run to the torch run, and how far apart their curves are."""
    caveat = {"interpreter": "; the interpreter runs each kernel program in Python: a check of "
                             "agreement, not of speed",
              "torch": "; fastgd ran its PyTorch path: both runs use PyTorch ops"}
    lines = [f"speed fastgd/torch: {_ratio(fast.tokens_per_s, ref.tokens_per_s)} "
             f"(training tokens/s; >1 means fastgd is faster{caveat.get(fast.backend, '')})"]
    if fast.memory_kind.startswith("peak GPU"):
        lines.append(f"peak memory fastgd/torch: {_ratio(fast.peak_memory, ref.peak_memory)}")
    else:
        lines.append("peak memory ratio: not measured on CPU (both runs share one process)")
    gap = max_curve_gap(fast.tracker, ref.tracker)
    lines.append(f"largest |fastgd - torch| difference in logged train/val loss: {gap:.2e}")
    if gap > UNSTABLE_GAP:
        lines.append(
            "  (a run with loss spikes amplifies rounding differences: torch's own fused and "
            "unfused AdamW drift apart as much; a lower --lr or longer --warmup gives a stable run "
            "to compare)")
    return lines


# Two stable runs of the same seed stay within ~1e-4 over hundreds of steps (rounding only);
# beyond this the training itself is amplifying differences.
UNSTABLE_GAP = 1e-3


def max_curve_gap(a, b) -> float:
    """Largest difference between two runs' losses at the steps both logged (nan when either
    logged a nan there: a diverged run is not "close")."""
    gaps = [0.0]
    for column in ("train_loss", "val_loss"):
        theirs = dict(zip(*b.curve(column)))
        gaps += [abs(value - theirs[step]) for step, value in zip(*a.curve(column))
                 if step in theirs]
    return math.nan if any(math.isnan(g) for g in gaps) else max(gaps)


def _steps(result) -> str:
    why = (" (diverged)" if result.diverged else " (early stop)" if result.stopped_early
           else " (interrupted)" if result.interrupted else "")
    return f"{result.steps_done}{why}"


def _mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _ratio(a, b) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a / b:.3g}x"
