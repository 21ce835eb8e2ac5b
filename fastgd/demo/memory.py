"""Whether a configuration can train in this machine's memory, decided before anything is
allocated: ``--layers 1000000`` should be a one-line refusal, not an hour of swapping.

The estimate is a lower bound -- what training certainly needs -- so it refuses only what cannot
fit: the parameters with their gradients and AdamW's two moments, and the activations autograd
keeps for one micro-batch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .config import Config, ConfigError
from .data import VOCAB_SIZE
from .model import Block, TinyGPT
from .train import uses_bf16

BYTES_PER_PARAMETER = 4 * 4  # float32 weight, gradient, exp_avg and exp_avg_sq
# Tensors autograd keeps per token and block, in units of --dim: the LayerNorm inputs and
# outputs (4), q, k, v (3), the attention output before and after its projection (2), the MLP's
# hidden layer before and after GELU (8). More is allocated in passing; this much is kept.
ACTIVATIONS_PER_TOKEN_AND_BLOCK = 17
# Per token outside the blocks: the logits, and their gradient or the softmax (--fused-linear
# keeps neither, but the term is small beside the blocks').
ACTIVATIONS_PER_TOKEN_OF_VOCAB = 2


def parameter_count(cfg: Config) -> int:
    """Counted on the meta device (no memory): the model's own definition, not a formula."""
    with torch.device("meta"):
        outside = TinyGPT(VOCAB_SIZE, cfg.context, cfg.dim, 0, cfg.heads, 0.0)
        block = Block(cfg.dim, cfg.heads, 0.0)
    return _count(outside) + cfg.layers * _count(block)


def training_bytes(cfg: Config, device: torch.device) -> tuple[int, int]:
    """(parameters with gradients and optimizer state, activations of one micro-batch)."""
    params = parameter_count(cfg)
    state = BYTES_PER_PARAMETER * params
    if cfg.compare:  # the first run's weights stay in memory while the second trains
        state += 4 * params
    element = 2 if uses_bf16(cfg, device) else 4
    per_token = (ACTIVATIONS_PER_TOKEN_AND_BLOCK * cfg.dim * cfg.layers
                 + ACTIVATIONS_PER_TOKEN_OF_VOCAB * VOCAB_SIZE)
    return state, element * per_token * cfg.batch_size * cfg.context


def check_fits(cfg: Config, device: torch.device) -> None:
    """Raise :class:`ConfigError` naming the options to lower when training cannot fit."""
    free = available_bytes(device)
    if free is None:
        return
    state, activations = training_bytes(cfg, device)
    if state + activations <= free:
        return
    raise ConfigError(
        f"too big for this machine: training needs at least {_gib(state + activations)} "
        f"({_gib(state)} for {parameter_count(cfg):,} parameters with their gradients and AdamW "
        f"state, {_gib(activations)} of activations per micro-batch) but {device.type} has "
        f"{_gib(free)} available; lower --layers {cfg.layers}, --dim {cfg.dim}, --batch-size "
        f"{cfg.batch_size} or --context {cfg.context}")


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a new allocation can get now: free GPU memory, or the host's available memory
    (within this process's cgroup limit); None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    sizes = [s for s in (_meminfo_available(), _cgroup_room()) if s is not None]
    if not sizes:
        try:
            sizes = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (AttributeError, ValueError, OSError):  # not POSIX
            return None
    return min(sizes)


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> Optional[int]:
    """cgroup v2: this process's group's limit minus its use (a container's memory is often less
    than the host's MemAvailable)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        group = next(line[3:] for line in lines if line.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError, StopIteration):
        return None


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
