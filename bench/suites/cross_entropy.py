"""Cross-entropy over a large vocabulary: fastgd against torch eager ``F.cross_entropy``, the same
under ``torch.compile``, and Liger-Kernel's when it is importable -- forward, backward, and both.

Every mode runs with ``requires_grad`` logits, as in training (that is when implementations save
tensors for the backward, and what their forward costs then). ``bwd`` times ``loss.backward``
alone on a graph built beforehand. Liger computes the gradient inside its forward, so its ``bwd``
is nearly free and its ``fwd`` carries the backward's work: compare it on ``fwd+bwd``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import machine, traffic
from ..case import Case, Skipped, Unavailable, clear_grads, rotating

KERNEL = "cross_entropy"
BASELINE = "torch"
PROVIDERS = ("fastgd", "torch", "torch.compile", "liger")

# (rows N, classes V) per size preset, with why each is there.
SHAPES = {
    # The grid: two batch sizes x Llama-2 (32000), Llama-3 (128256), Gemma (256000).
    "full": [(n, v) for n in (4096, 16384) for v in (32000, 128256, 256000)],
    # One Llama-3-sized case: large enough to fill an H200, quick enough for the one-call check.
    "quick": [(4096, 128256)],
    # CPU: enough rows to time above Python overhead, small enough to finish in seconds.
    "cpu_full": [(1024, 32000), (1024, 128256)],
    "cpu_quick": [(256, 32000)],
    # Tests of the machinery: a few milliseconds per call.
    "tiny": [(16, 1000)],
}
# bf16 is how large-vocabulary losses train on GPUs; fp32 is what a CPU trains in.
DTYPES = {"full": ("fp32", "bf16"), "quick": ("bf16",), "cpu_full": ("fp32", "bf16"),
          "cpu_quick": ("fp32",), "tiny": ("fp32",)}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cases(device: str, size: str) -> list:
    preset = _preset(device, size)
    shapes = SHAPES[preset]
    out: list = []
    providers = list(PROVIDERS)
    if device != "cuda":
        providers.remove("liger")
        providers.remove("torch.compile")
        out.append(Skipped(f"{KERNEL}: torch.compile, liger", "without a GPU (Liger is "
                           "CUDA-only; torch.compile on CPU would compile C++ per shape)"))
    elif _liger_loss() is None:
        providers.remove("liger")
        out.append(Skipped(f"{KERNEL}: liger", "Liger-Kernel is not installed"))
    for dtype in DTYPES[preset]:
        for n_rows, n_classes in shapes:
            for mode in traffic.CE_MODES:
                for provider in providers:
                    if provider == "torch.compile" and not compiled_mode(size, mode):
                        continue
                    out.append(make_case(provider, mode, dtype, n_rows, n_classes, device))
    if size == "quick" and "torch.compile" in providers:
        out.append(Skipped(f"{KERNEL}: torch.compile fwd, bwd", QUICK_COMPILE_NOTE))
    return out


QUICK_COMPILE_NOTE = ("the quick set compiles for fwd+bwd only (each compilation takes tens of "
                      "seconds); the full set has every mode")


def compiled_mode(size: str, mode: str) -> bool:
    """Whether torch.compile is measured for ``mode`` in this preset."""
    return size != "quick" or mode == "fwd+bwd"


def make_case(provider: str, mode: str, dtype: str, n_rows: int, n_classes: int,
              device: str) -> Case:
    torch_dtype = TORCH_DTYPES[dtype]
    itemsize = torch.finfo(torch_dtype).bits // 8

    def build() -> Callable[[], object]:
        loss_fn = loss_function(provider)
        l2 = machine.l2_bytes() if device == "cuda" else 0
        set_bytes = n_rows * (n_classes * itemsize + traffic.TARGET_BYTES)
        next_set = rotating(lambda: inputs(n_rows, n_classes, torch_dtype, device, mode, loss_fn),
                            set_bytes, l2)
        return _timed_call(mode, loss_fn, next_set)

    return Case(
        kernel=KERNEL, provider=provider, mode=mode, dtype=dtype, device=device,
        shape=f"N={n_rows} V={n_classes}", x=n_rows * n_classes, x_label="logits (N*V)",
        nbytes=traffic.cross_entropy_bytes(n_rows, n_classes, itemsize, mode),
        build=build, compiles=provider == "torch.compile",
    )


def loss_function(provider: str) -> Callable:
    """``(logits, target) -> mean loss`` for ``provider``."""
    if provider == "fastgd":
        import fastgd

        return fastgd.cross_entropy
    if provider == "torch":
        return F.cross_entropy
    if provider == "torch.compile":
        torch._dynamo.reset()  # a fresh cache per case: no recompilation limit, no stale graph
        return torch.compile(_torch_loss, dynamic=False)
    if provider == "liger":
        loss = _liger_loss()
        if loss is None:
            raise Unavailable("Liger-Kernel is not installed")
        return loss
    raise ValueError(f"unknown cross-entropy provider {provider!r}; expected one of {PROVIDERS}")


def _torch_loss(x, t):
    return F.cross_entropy(x, t)


def _liger_loss():
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception:  # not installed, or installed without a working GPU stack
        return None
    module = LigerCrossEntropyLoss()

    def liger_loss(x, t):
        out = module(x, t)
        return out[0] if isinstance(out, tuple) else out

    return liger_loss


def inputs(n_rows, n_classes, dtype, device, mode, loss_fn) -> tuple:
    """Random logits (standard normal: never zeros) and targets; for ``bwd`` also the loss whose
    graph the timed call walks back through."""
    x = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    t = torch.randint(0, n_classes, (n_rows,), device=device)
    loss = loss_fn(x, t) if mode == "bwd" else None
    return x, t, loss


def _timed_call(mode: str, loss_fn: Callable, next_set: Callable[[], tuple]) -> Callable[[], object]:
    if mode == "fwd":
        def forward():
            x, t, _ = next_set()
            return loss_fn(x, t)

        return forward
    if mode == "bwd":
        def backward():
            x, _, loss = next_set()
            clear_grads([x])
            loss.backward(retain_graph=True)

        return backward

    def forward_backward():
        x, t, _ = next_set()
        clear_grads([x])
        loss_fn(x, t).backward()

    return forward_backward


def _preset(device: str, size: str) -> str:
    if size == "tiny" or device == "cuda":
        return size
    return "cpu_quick" if size == "quick" else "cpu_full"
