"""One benchmark case: what is measured (kernel, provider, mode, dtype, shape), what it must move,
and how to build the call that is timed."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Callable, Iterator, Sequence

from . import timing


class Unavailable(Exception):
    """Raised by a case's ``build`` when its provider cannot run here (an optional peer such as
    Liger-Kernel is not installed); the runner records the reason instead of a figure."""


@dataclasses.dataclass
class Case:
    kernel: str  # "cross_entropy", "adamw", "linear_cross_entropy", ...
    provider: str  # "fastgd", "torch", "torch.compile", "liger", "torch foreach", ...
    mode: str  # "fwd", "bwd", "fwd+bwd", "step", "step+clip"
    dtype: str  # "fp32", "bf16"
    device: str  # "cuda" or "cpu"
    shape: str  # readable: "N=4096 V=128256"
    x: float  # the size plotted on the x axis
    x_label: str  # what x counts ("logits (N*V)", "parameters")
    nbytes: int  # bytes the operation must move (bench.traffic)
    build: Callable[[], Callable[[], object]]  # allocate inputs, return the call to time
    flops: int = 0  # matrix-product FLOPs it must do (compute-bound cases)
    bound: str = "memory"  # "memory" (read against copy GB/s) or "compute" (against matmul)
    host_overhead: bool = False  # also report CPU time per call (many small launches)
    compiles: bool = False  # torch.compile: long first call; run after the others

    @property
    def group(self) -> tuple[str, str, str, str]:
        """Cases sharing this key are the same work done by different providers."""
        return (self.kernel, self.mode, self.dtype, self.shape)

    @property
    def name(self) -> str:
        return f"{self.kernel}[{self.mode}|{self.dtype}|{self.shape}|{self.provider}]"


@dataclasses.dataclass
class Skipped:
    """A case (or a whole provider or suite) that does not run here, and why."""

    name: str
    reason: str


def rotating(make_set: Callable[[], tuple], set_bytes: int, l2_bytes: int) -> Callable[[], tuple]:
    """Build enough input sets that consecutive calls do not hit the L2 cache (see
    :func:`bench.timing.rotation_sets`) and return a function handing them out in turn."""
    sets = [make_set() for _ in range(timing.rotation_sets(set_bytes, l2_bytes))]
    cycle: Iterator[tuple] = itertools.cycle(sets)
    return lambda: next(cycle)


def on_device(device: str):
    """Context for fastgd calls: on the CPU, fastgd's PyTorch path (the Triton kernels need a GPU,
    and the interpreter, if the environment turned it on, is a test tool, not a speed)."""
    if device == "cpu":
        import fastgd

        return fastgd.force_backend("torch")
    return contextlib.nullcontext()


def prepare(case: Case) -> Callable[[], object]:
    """Build ``case``'s inputs and return its timed call, both under :func:`on_device` (a
    backward runs the path its forward chose only if both see the same choice)."""
    with on_device(case.device):
        fn = case.build()
    if case.device != "cpu":
        return fn

    def call():
        with on_device(case.device):
            return fn()

    return call


def clear_grads(tensors: Sequence) -> None:
    for t in tensors:
        t.grad = None
