"""One AdamW step: fastgd against torch's ``foreach`` and ``fused`` implementations, without and
with clipping by the global gradient norm (fastgd's fused ``max_grad_norm`` against
``clip_grad_norm_`` followed by the step).

Two parameter sets:

* an LLM's: the tensors of a Llama-style decoder (TinyLlama's sizes plus q/k/v biases: 267
  tensors, 1.1 B parameters), fp32 and bf16 -- the bandwidth-bound case;
* many small tensors (2048 vectors of 256..4096 elements): the step is launch-bound, and the
  figure that matters is the host's CPU time per step, reported beside the device time.

Both sets are far larger than the L2 (and ``do_bench`` flushes it before every timed call), so
inputs are not rotated. Gradients are random and non-zero; parameters evolve from step to step.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import traffic
from ..case import Case

KERNEL = "adamw"
BASELINE = "torch foreach"
PROVIDERS = ("fastgd", "torch foreach", "torch fused")
MODES = ("step", "step+clip")
MAX_GRAD_NORM = 1.0  # below the random gradients' norm: clipping really scales them
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def llm_shapes(layers: int, hidden: int, intermediate: int, kv_dim: int, vocab: int) -> list[tuple]:
    """Parameter shapes of a Llama-style decoder with q/k/v biases (12 tensors per layer)."""
    shapes: list[tuple] = [(vocab, hidden)]  # token embedding
    for _ in range(layers):
        shapes += [(hidden, hidden), (hidden,),  # q projection and bias
                   (kv_dim, hidden), (kv_dim,), (kv_dim, hidden), (kv_dim,),  # k, v (grouped)
                   (hidden, hidden),  # output projection
                   (intermediate, hidden), (intermediate, hidden), (hidden, intermediate),  # MLP
                   (hidden,), (hidden,)]  # two RMSNorm weights
    shapes += [(hidden,), (vocab, hidden)]  # final norm, LM head
    return shapes


def small_shapes(count: int) -> list[tuple]:
    """``count`` vectors cycling through 256..4096 elements (norm weights, biases, scales)."""
    sizes = (256, 512, 1024, 2048, 4096)
    return [(sizes[i % len(sizes)],) for i in range(count)]


# name -> (shapes, dtypes, why)
PARAMETER_SETS = {
    "full": [("llm", llm_shapes(22, 2048, 5632, 256, 32000), ("fp32", "bf16")),
             ("small", small_shapes(2048), ("fp32",))],
    # The whole 1.1 B model in fp32 (~31 GB moved per step) and the launch-bound set.
    "quick": [("llm", llm_shapes(22, 2048, 5632, 256, 32000), ("fp32",)),
              ("small", small_shapes(2048), ("fp32",))],
    "cpu_full": [("llm", llm_shapes(2, 512, 1376, 128, 8000), ("fp32", "bf16")),
                 ("small", small_shapes(256), ("fp32",))],
    "cpu_quick": [("llm", llm_shapes(1, 256, 688, 64, 4000), ("fp32",)),
                  ("small", small_shapes(64), ("fp32",))],
    "tiny": [("llm", llm_shapes(1, 64, 172, 16, 100), ("fp32",)),
             ("small", small_shapes(8), ("fp32",))],
}


def cases(device: str, size: str) -> list:
    out: list = []
    preset = size if size == "tiny" or device == "cuda" else f"cpu_{size}"
    for set_name, shapes, dtypes in PARAMETER_SETS[preset]:
        for dtype in dtypes:
            for mode in MODES:
                for provider in PROVIDERS:
                    out.append(make_case(provider, mode, dtype, set_name, shapes, device))
    return out


def make_case(provider: str, mode: str, dtype: str, set_name: str, shapes: list[tuple],
              device: str) -> Case:
    torch_dtype = TORCH_DTYPES[dtype]
    numel = sum(_numel(s) for s in shapes)
    clip = mode == "step+clip"

    def build() -> Callable[[], object]:
        params = parameters(shapes, torch_dtype, device)
        return step_function(provider, params, clip)

    return Case(
        kernel=KERNEL, provider=provider, mode=mode, dtype=dtype, device=device,
        shape=f"{set_name}: {_count(numel)} params in {len(shapes)} tensors",
        x=numel, x_label="parameters",
        nbytes=traffic.adam_bytes(numel, torch.finfo(torch_dtype).bits // 8, clip),
        build=build, host_overhead=device == "cuda",
    )


def step_function(provider: str, params: list, clip: bool) -> Callable[[], object]:
    """One optimizer step (with clipping when ``clip``) over ``params`` (gradients set)."""
    hyper = dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)
    if provider == "fastgd":
        import fastgd

        opt = fastgd.AdamW(params, **hyper, max_grad_norm=MAX_GRAD_NORM if clip else None)
        return opt.step
    if provider in ("torch foreach", "torch fused"):
        fused = provider == "torch fused"
        opt = torch.optim.AdamW(params, **hyper, foreach=not fused, fused=fused or None)
        if not clip:
            return opt.step

        def clip_and_step():
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=True)
            opt.step()

        return clip_and_step
    raise ValueError(f"unknown optimizer provider {provider!r}; expected one of {PROVIDERS}")


def parameters(shapes, dtype, device) -> list:
    """Random parameters (std 0.02) with random gradients (std 0.1: their global norm is above
    MAX_GRAD_NORM for every set here, the tiny one included, so clipping scales them)."""
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * 0.02)
        p.grad = torch.randn_like(p) * 0.1
        params.append(p)
    return params


def _numel(shape: tuple) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
