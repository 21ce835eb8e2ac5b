"""The results plot: train and validation loss of each run (left), learning rate (right).

matplotlib is imported here only, so ``import fastgd`` never needs it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

STYLE = {"fastgd": dict(color="tab:blue", linestyle="-"),
         "torch": dict(color="tab:orange", linestyle="--")}


def save_plot(path: Path, trackers, title: str) -> Optional[str]:
    """Write the PNG; returns None, or a one-line reason when it could not be made."""
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'fastgd[demo]')"
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 4.2),
                                         gridspec_kw={"width_ratios": [2.2, 1]})
    for tracker in trackers:
        style = STYLE.get(tracker.run, {})
        steps, train = tracker.curve("train_loss")
        loss_ax.plot(steps, train, alpha=0.55, linewidth=1.2, label=f"{tracker.run} train",
                     **style)
        steps, val = tracker.curve("val_loss")
        loss_ax.plot(steps, val, marker="o", markersize=4, linewidth=2,
                     label=f"{tracker.run} validation", **style)
        steps, lr = tracker.curve("lr")
        lr_ax.plot(steps, lr, label=tracker.run, **style)
    loss_ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats per byte)",
                title="loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    lr_ax.set(xlabel="optimizer step", ylabel="learning rate", title="warmup + cosine schedule")
    lr_ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
