"""Checkpoints: everything needed to continue a run exactly where it stopped.

Written to a temporary file and renamed into place, so an interruption while saving leaves the
previous checkpoint intact rather than half a file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .config import RESUME_MUST_MATCH, Config, ConfigError

FORMAT = 1


def save(path: Path, *, cfg: Config, stack: str, step: int, model, optimizer, schedule,
         tracker) -> None:
    state = {
        "format": FORMAT,
        "config": dataclasses.asdict(cfg),
        "stack": stack,
        "step": step,  # optimizer steps completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": _rng_state(),
        "tracker": tracker.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, cfg: Config, stack: str) -> dict:
    """The checkpoint at ``path``, after checking it belongs to this configuration."""
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}; run once without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which, in one line
        raise ConfigError(f"--resume: cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if state.get("format") != FORMAT or state.get("stack") != stack:
        raise ConfigError(f"--resume: {path} is not a checkpoint of this demo's {stack} run")
    saved = state["config"]
    for name in RESUME_MUST_MATCH:
        if saved.get(name) != getattr(cfg, name):
            raise ConfigError(
                f"--resume: {path} was trained with --{name.replace('_', '-')} {saved.get(name)}"
                f", not {getattr(cfg, name)}; pass the same value to continue that run")
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}
