"""``--fsdp``: the demo trained data parallel with FSDP2 under ``torchrun``, one process per
device.

Only torch.distributed is used: ``init_process_group`` (NCCL on GPUs, gloo on CPUs), a 1-D
``init_device_mesh``, and ``fully_shard`` on each transformer block and then the whole model.
Each rank draws the same global batch from the same seed and trains on its rows ``rank::world``
of it, so a run on N processes follows the curve of one process with the same global batch (up
to float rounding). The few values the loop reads -- the logged training loss, the validation
loss and whether a rank was asked to stop -- are summed across ranks where they are read anyway,
at logged steps; nothing adds a sync per step.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

LAUNCH = "torchrun --nproc-per-node N -m fastgd.demo --fsdp"
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # what torchrun sets for each process


@dataclass(frozen=True)
class Parallel:
    """This process's place in the run; passed down explicitly (no process-wide flag)."""
    rank: int
    world_size: int
    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    device: torch.device  # this process's (the collectives' tensors live there)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes files (the others would write the same bytes)."""
        return self.rank == 0

    def shard(self, model: nn.Module) -> None:
        """FSDP2: each block is its own unit (its parameters are gathered only while it runs),
        then the root takes what is left (embeddings, final LayerNorm). Done before the optimizer
        is built, so the optimizer holds the sharded DTensor parameters."""
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a batch every rank holds: disjoint, together the whole batch."""
        return batch[self.rank::self.world_size]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (gloo has no AVG reduction: callers divide where they mean it)."""
        total = values.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def main_then_agree(self, action: Callable[[], None]) -> None:
        """``action()`` on rank 0 only (e.g. emptying --out), then every rank learns whether it
        refused: all ranks stop together, rather than the others waiting in a collective for a
        rank 0 that has exited."""
        refusal: Optional[ConfigError] = None
        if self.is_main:
            try:
                action()
            except ConfigError as exc:
                refusal = exc
        failed = self.sum(torch.tensor(float(refusal is not None), device=self.device))
        if refusal is not None:
            raise refusal
        if failed.item():
            raise ConfigError("rank 0 refused the run (its error says why)")


def check_launched() -> None:
    """--fsdp needs the rank, world size and local rank that torchrun gives each process."""
    missing = [name for name in LAUNCH_ENV if name not in os.environ]
    if missing:
        raise ConfigError(f"--fsdp runs one process per device: launch it with `{LAUNCH}` "
                          f"(missing {', '.join(missing)} from the environment)")


def check_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ConfigError(f"--fsdp on {world_size} processes: --batch-size {batch_size} (the "
                          f"global micro-batch) must be divisible by {world_size}, each process "
                          f"taking an equal share")


def device_for(kind: str) -> torch.device:
    """This process's device of type ``kind``: the GPU of its local rank, or the CPU."""
    if kind != "cuda":
        return torch.device(kind)
    local_rank, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"--fsdp: process {local_rank} of this machine has no GPU of its own "
                          f"({count} here): launch at most --nproc-per-node {count}, or train "
                          f"on CPUs with --device cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device: torch.device, batch_size: int) -> Iterator[Parallel]:
    """The process group for the block's duration (destroyed however the block ends)."""
    from torch.distributed.device_mesh import init_device_mesh

    check_batch(batch_size, int(os.environ["WORLD_SIZE"]))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        world_size = dist.get_world_size()
        mesh = init_device_mesh(device.type, (world_size,))
        yield Parallel(rank=dist.get_rank(), world_size=world_size, mesh=mesh, device=device)
    finally:
        dist.destroy_process_group()


def shard_eval_windows(x: torch.Tensor, y: torch.Tensor,
                       parallel: Optional[Parallel]) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's validation windows. Padded first to a multiple of the world size with windows
    whose targets are ignored (-100), so every rank runs the same number of forward passes --
    FSDP gathers parameters collectively -- and the padding adds nothing to the loss."""
    if parallel is None:
        return x, y
    pad = -x.shape[0] % parallel.world_size
    x = torch.cat([x, x[:1].expand(pad, -1)])
    y = torch.cat([y, torch.full((pad, y.shape[1]), -100, dtype=y.dtype)])
    return parallel.rows(x), parallel.rows(y)
