"""The LM head's loss, ``cross_entropy(hidden @ weight.T, target)``: fastgd's chunked
``linear_cross_entropy`` (the ``N x V`` logits never exist whole) against materialised logits --
``F.cross_entropy((hidden @ weight.T).float(), target)`` as Hugging Face causal-LM models compute
it, eager and under ``torch.compile`` -- and Liger-Kernel's fused linear cross-entropy when it is
importable. Time, TFLOP/s against the bf16 matrix-product rate measured in the same run, and
peak memory: the reason to use a fused version.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import machine, traffic
from ..case import Case, Skipped, Unavailable, clear_grads, rotating
from .cross_entropy import QUICK_COMPILE_NOTE, compiled_mode

KERNEL = "linear_cross_entropy"
BASELINE = "torch"
PROVIDERS = ("fastgd", "torch", "torch.compile", "liger")
MODES = ("fwd", "fwd+bwd")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (tokens N, hidden H, vocabulary V) per preset.
SHAPES = {
    # Llama-3-8B's head at 4k and 16k tokens per step; Gemma-2-2B's (H=2304, V=256000).
    "full": [(4096, 4096, 128256), (16384, 4096, 128256), (8192, 2304, 256000)],
    "quick": [(4096, 4096, 128256)],
    "cpu_full": [(512, 512, 32000)],
    "cpu_quick": [(256, 256, 8000)],
    "tiny": [(16, 32, 500)],
}


def cases(device: str, size: str) -> list:
    out: list = []
    providers = list(PROVIDERS)
    if device != "cuda":
        providers.remove("liger")
        providers.remove("torch.compile")
        out.append(Skipped(f"{KERNEL}: torch.compile, liger", "without a GPU"))
    elif _liger_loss() is None:
        providers.remove("liger")
        out.append(Skipped(f"{KERNEL}: liger", "Liger-Kernel is not installed"))
    preset = size if size == "tiny" or device == "cuda" else f"cpu_{size}"
    # bf16 is how LM heads train on GPUs; the CPU has no fast bf16 matrix product.
    dtype = "bf16" if device == "cuda" else "fp32"
    for n_rows, hidden, n_classes in SHAPES[preset]:
        for mode in MODES:
            for provider in providers:
                if provider == "torch.compile" and not compiled_mode(size, mode):
                    continue
                out.append(make_case(provider, mode, dtype, n_rows, hidden, n_classes, device))
    if size == "quick" and "torch.compile" in providers:
        out.append(Skipped(f"{KERNEL}: torch.compile fwd", QUICK_COMPILE_NOTE))
    return out


def make_case(provider, mode, dtype, n_rows, hidden, n_classes, device) -> Case:
    torch_dtype = TORCH_DTYPES[dtype]
    itemsize = torch.finfo(torch_dtype).bits // 8

    def build() -> Callable[[], object]:
        loss_fn = loss_function(provider)
        l2 = machine.l2_bytes() if device == "cuda" else 0
        set_bytes = (n_rows + n_classes) * hidden * itemsize
        next_set = rotating(lambda: inputs(n_rows, hidden, n_classes, torch_dtype, device),
                            set_bytes, l2)
        if mode == "fwd":
            def forward():
                h, w, t = next_set()
                return loss_fn(h, w, t)

            return forward

        def forward_backward():
            h, w, t = next_set()
            clear_grads([h, w])
            loss_fn(h, w, t).backward()

        return forward_backward

    return Case(
        kernel=KERNEL, provider=provider, mode=mode, dtype=dtype, device=device,
        shape=f"N={n_rows} H={hidden} V={n_classes}", x=n_rows * n_classes,
        x_label="logits (N*V)",
        nbytes=traffic.linear_cross_entropy_bytes(n_rows, hidden, n_classes, itemsize, mode),
        flops=traffic.linear_cross_entropy_flops(n_rows, hidden, n_classes, mode),
        bound="compute", build=build, compiles=provider == "torch.compile",
    )


def loss_function(provider: str) -> Callable:
    """``(hidden, weight, target) -> mean loss`` for ``provider``."""
    if provider == "fastgd":
        import fastgd

        return fastgd.linear_cross_entropy
    if provider == "torch":
        return materialised_loss
    if provider == "torch.compile":
        torch._dynamo.reset()
        return torch.compile(materialised_loss, dynamic=False)
    if provider == "liger":
        loss = _liger_loss()
        if loss is None:
            raise Unavailable("Liger-Kernel is not installed")
        return loss
    raise ValueError(f"unknown linear cross-entropy provider {provider!r}; expected one of "
                     f"{PROVIDERS}")


def materialised_loss(hidden, weight, target):
    return F.cross_entropy((hidden @ weight.T).float(), target)


def _liger_loss():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception:
        return None
    module = LigerFusedLinearCrossEntropyLoss()

    def liger_loss(hidden, weight, target):
        out = module(weight, hidden, target)  # Liger takes the weight first
        return out[0] if isinstance(out, tuple) else out

    return liger_loss


def inputs(n_rows, hidden, n_classes, dtype, device) -> tuple:
    """Hidden states ~ N(0, 1) and a head with std 1/sqrt(H): logits of order 1, as in a trained
    model (never zeros), and random targets."""
    h = torch.randn(n_rows, hidden, device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(n_classes, hidden, device=device, dtype=dtype) / hidden ** 0.5).requires_grad_()
    t = torch.randint(0, n_classes, (n_rows,), device=device)
    return h, w, t
