"""The one place that decides how a call runs (and the only module that looks at devices or the
environment).

Three backends:

* ``"triton"``  – CUDA tensors: the Triton kernels, compiled.
* ``"interpreter"`` – CPU tensors while ``TRITON_INTERPRET=1`` was set before ``import triton``:
  the same kernels, run by Triton's interpreter (this is how CI tests them).
* ``"torch"`` – everything else (CPU without the interpreter, no Triton installed, or forced with
  :func:`force_backend`): a PyTorch implementation with the same semantics.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl

    HAS_TRITON = True
    # Triton wraps its own jit helpers at import time; their type tells interpretation apart
    # more reliably than re-reading the environment variable (which must be set before import).
    INTERPRETING = type(tl.cdiv).__name__ == "InterpretedFunction"
except ImportError:  # pragma: no cover - triton is Linux-only
    HAS_TRITON = False
    INTERPRETING = False

_BACKENDS = ("auto", "torch")
_forced = "auto"


def backend_for(tensor: torch.Tensor) -> str:
    """Name of the backend that runs an op whose main operand is ``tensor``."""
    if _forced == "torch" or not HAS_TRITON:
        return "torch"
    if tensor.device.type == "cuda" and not INTERPRETING:
        return "triton"
    if tensor.device.type == "cpu" and INTERPRETING:
        return "interpreter"
    return "torch"


def uses_kernels(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is handled by the Triton kernels (compiled or interpreted)."""
    return backend_for(tensor) != "torch"


def launch_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context for launching a kernel on ``tensor``: Triton launches on the *current* CUDA
    device and stream, so make ``tensor``'s device current (a no-op off the GPU)."""
    if backend_for(tensor) == "triton":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def can_check_on_host(tensor: torch.Tensor) -> bool:
    """True when reading ``tensor``'s values costs no device synchronisation (CPU memory).

    Used for input validation that would need a host sync on a GPU (e.g. target ranges)."""
    return tensor.device.type == "cpu"


def step_device(param: torch.Tensor) -> torch.device:
    """Where an optimizer keeps ``param``'s step count: on its device (the kernels read it
    there), except for a meta parameter, which has no values -- its step is a host number, as in
    torch's non-capturable Adam."""
    return torch.device("cpu") if param.device.type == "meta" else param.device


@contextlib.contextmanager
def force_backend(name: str) -> Iterator[None]:
    """Run the enclosed calls on ``name`` (``"torch"`` forces the PyTorch path; ``"auto"`` is the
    default choice). Not thread-safe: meant for tests and comparisons."""
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"force_backend(name={name!r}): expected one of {_BACKENDS}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous
