"""Checkpoints: everything needed to continue a run exactly where it stopped.

Written to a temporary file and renamed into place, so an interruption while saving leaves the
previous checkpoint intact rather than half a file.

A checkpoint holds only tensors and plain values (dicts, lists, tuples, strings, numbers, None)
and is read with ``torch.load(weights_only=True)``: unpickling anything else could run code from
the file, so a file that needs more is refused, not loaded.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from pathlib import Path

import torch

from .config import Config, ConfigError, resume_identity

FORMAT = 2  # 2: the resume identity and the running training loss are saved


def save(path: Path, *, cfg: Config, stack: str, step: int, model, optimizer, schedule,
         tracker, running_loss: dict) -> None:
    state = {
        "format": FORMAT,
        "config": dataclasses.asdict(cfg),  # for reading; resuming checks "identity"
        "identity": resume_identity(cfg),
        "stack": stack,
        "step": step,  # optimizer steps completed
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": _rng_state(),
        "tracker": tracker.state_dict(),
        # The sum of the training losses since the last logged row and how many steps it holds,
        # so the first row after a resume averages the same steps as an uninterrupted run's.
        "running_loss": running_loss,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, cfg: Config, stack: str, map_location="cpu") -> dict:
    """The checkpoint at ``path``, after checking it belongs to this configuration."""
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}; run once without --resume first")
    state = _read(path, map_location)
    if not isinstance(state, dict) or state.get("stack") != stack:
        raise ConfigError(f"--resume: {path} is not a checkpoint of this demo's {stack} run")
    if state.get("format") != FORMAT:
        raise ConfigError(f"--resume: {path} was written by another version of the demo "
                          f"(format {state.get('format')}, expected {FORMAT}); start over "
                          f"with --overwrite")
    saved = state["identity"]
    for flag, value in resume_identity(cfg).items():
        if saved.get(flag) != value:
            raise ConfigError(
                f"--resume: {path} was trained with {flag} {saved.get(flag)}, not {value}; "
                f"pass the same value to continue that run")
    return state


def _read(path: Path, map_location) -> object:
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol: stderr stays one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # what weights_only refuses, and non-pickle bytes
        raise ConfigError(
            f"--resume: refused {path}: it holds something other than tensors and plain values, "
            f"or is damaged (nothing in it was run); start over with --overwrite") from exc
    except Exception as exc:  # a truncated file: say which, in one line
        reason = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise ConfigError(f"--resume: cannot read {path} ({type(exc).__name__}: {reason}); "
                          f"start over with --overwrite") from exc


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"]["cpu"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}
