"""What a run records: one long-form row per logged step or evaluation, the best validation loss
so far, and the early-stopping counter."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional


@dataclass
class Row:
    run: str  # "fastgd" or "torch"
    step: int  # optimizer steps completed
    tokens: int  # training tokens seen
    elapsed_s: float  # training time so far (evaluations excluded)
    lr: float
    # None where not measured (an empty cell in metrics.csv); a measured nan or inf stays one
    # ("nan", "inf"): it is how a diverged run shows.
    train_loss: Optional[float] = None  # mean over the steps since the previous row
    grad_norm: Optional[float] = None  # before clipping, at the last of those steps
    val_loss: Optional[float] = None  # only on evaluation rows


class Tracker:
    def __init__(self, run: str, patience: int) -> None:
        self.run = run
        self.patience = patience
        self.rows: list[Row] = []
        self.best_val = math.inf
        self.best_step: Optional[int] = None
        self.bad_evals = 0

    def log(self, **values) -> Row:
        row = Row(run=self.run, **values)
        self.rows.append(row)
        return row

    def evaluated(self, val_loss: float) -> bool:
        """Record an evaluation's loss; True when it is the best so far."""
        if val_loss < self.best_val:
            self.best_val, self.best_step, self.bad_evals = val_loss, self.rows[-1].step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Early stopping: ``patience`` evaluations in a row without a new best (0 disables)."""
        return self.patience > 0 and self.bad_evals >= self.patience

    def curve(self, column: str) -> tuple[list[int], list[float]]:
        """The steps where ``column`` was measured and its values (nan included)."""
        pairs = [(r.step, getattr(r, column)) for r in self.rows
                 if getattr(r, column) is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def state_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "best_val": self.best_val,
                "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [Row(**r) for r in state["rows"]]
        self.best_val, self.best_step = state["best_val"], state["best_step"]
        self.bad_evals = state["bad_evals"]


def write_csv(path: Path, trackers: list[Tracker]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f.name for f in fields(Row)])
        for tracker in trackers:
            for row in tracker.rows:
                writer.writerow([_fmt(v) for v in asdict(row).values()])


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"  # nan and inf as "nan" and "inf"
    return str(value)
