"""Compile fastgd's Triton kernels for NVIDIA GPUs without a GPU, and read what the compiler made.

A tool of the source tree (fastgd never imports it): :func:`all_specs` calls each launcher's own
argument builder (``forward_call``, ``backward_call``, ``adam_call``, ``grad_sumsq_call``) with
meta tensors for typical shapes, and :func:`specialise` turns the call into the signature a real
launch compiles -- the way Triton's runtime specialises arguments: a tensor is a typed pointer,
16-byte aligned (fresh allocations are); an int equal to 1 becomes a constant, one divisible by 16
is marked so; a float is fp32. :func:`compile_spec` compiles a spec for one SM version and reads
registers, spills (local memory), shared memory and the widest global load/store from the cubin.
``python -m bench.static`` is the command that prints the report.

Must run where ``TRITON_INTERPRET`` is unset: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import tempfile
from typing import Any

import torch

from fastgd.dtypes import KERNEL_FLOAT_DTYPES, TRITON_TYPE_NAMES, compute_dtype
from fastgd.kernel_call import KernelCall

# The vocabulary of the cross-entropy cases (Llama 3's): many tiles per row, divisible by 16.
CE_CLASSES = 128256
ALIGNED = [["tt.divisibility", 16]]


@dataclasses.dataclass
class KernelSpec:
    name: str  # a readable case name, e.g. "ce_forward/bf16"
    fn: Any  # the @triton.jit function
    signature: dict  # parameter name -> Triton type string ("*bf16", "i32", "constexpr", ...)
    constexprs: dict  # constexpr name -> value
    aligned: tuple  # parameter names a real launch sees as 16-divisible (pointers, strides)
    num_warps: int
    # Every kernel streams its inputs (128-bit loads, no local memory); False here: it stores
    # per-row results, which may be narrow, rather than streaming its output too.
    streams_stores: bool = True


@dataclasses.dataclass
class KernelReport:
    name: str
    arch: int
    registers: int
    stack: int
    local: int
    shared: int
    widest_load_bits: int
    widest_store_bits: int
    streams_stores: bool


def specialise(name: str, call: KernelCall, streams_stores: bool = True) -> KernelSpec:
    """The compile spec of ``call`` as Triton's runtime would specialise its arguments."""
    params = kernel_parameters(call.kernel)
    if set(params) != set(call.args):
        raise TypeError(f"{name}: the builder passes {sorted(call.args)}, the kernel takes "
                        f"{list(params)}")
    signature, constexprs, aligned = {}, {}, []
    for param, is_constexpr in params.items():
        value = call.args[param]
        if is_constexpr or (type(value) is int and value == 1):
            signature[param], constexprs[param] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param] = "*" + TRITON_TYPE_NAMES[value.dtype]
            aligned.append(param)
        elif type(value) is int:
            signature[param] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                aligned.append(param)
        elif type(value) is float:
            signature[param] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialise {param}={value!r}")
    return KernelSpec(name, call.kernel, signature, constexprs, tuple(aligned), call.num_warps,
                      streams_stores)


def kernel_parameters(kernel) -> dict[str, bool]:
    """Parameter name -> is it a ``tl.constexpr``, in order, for a ``@triton.jit`` function
    whether compiled or interpreted (both keep the Python function as ``.fn``)."""
    return {p.name: "constexpr" in str(p.annotation)
            for p in inspect.signature(kernel.fn).parameters.values()}


def problems(report: KernelReport) -> list[str]:
    """What breaks the properties a streaming kernel's speed relies on: no local memory
    (spills), 128-bit global loads, and 128-bit stores where it streams its output. Empty when
    they all hold."""
    found = []
    if report.local or report.stack:
        found.append(f"local memory {report.local} B, stack {report.stack} B (spills)")
    if report.widest_load_bits < 128:
        found.append(f"widest load {report.widest_load_bits}-bit, not 128")
    if report.streams_stores and report.widest_store_bits < 128:
        found.append(f"widest store {report.widest_store_bits}-bit, not 128")
    return found


# --------------------------------------------------------------------------- the cases
def _meta(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def cross_entropy_specs() -> list[KernelSpec]:
    """The row kernels per dtype (the vocabulary-parallel forward too): plain, and with every
    option (weights, smoothing, soft cap, and in the backward an upstream gradient of ``lse``)."""
    from fastgd.losses.cross_entropy_ops import (ClassSlice, RowOptions, backward_call,
                                                 forward_call, shard_forward_call)

    rows = 4
    specs = []
    for dtype in KERNEL_FLOAT_DTYPES:
        compute = compute_dtype(dtype)
        logits = _meta(rows, CE_CLASSES, dtype=dtype)
        target = _meta(rows, dtype=torch.int64)
        ce, lse, grad_ce = (_meta(rows, dtype=compute) for _ in range(3))
        for every_option in (False, True):
            weight = _meta(CE_CLASSES, dtype=compute) if every_option else None
            options = RowOptions(ignore_index=-100,
                                 label_smoothing=0.1 if every_option else 0.0,
                                 logit_scale=1.0, softcap=30.0 if every_option else 0.0)
            tag = TRITON_TYPE_NAMES[dtype] + ("+w+ls+cap" if every_option else "")
            specs.append(specialise(f"ce_forward/{tag}",
                                    forward_call(logits, target, weight, ce, lse, options),
                                    streams_stores=False))
            # one rank's slice, the second half of a vocabulary of 2 * CE_CLASSES
            classes = ClassSlice(offset=CE_CLASSES, total=2 * CE_CLASSES)
            all_weights = _meta(2 * CE_CLASSES, dtype=compute) if every_option else None
            specs.append(specialise(f"ce_shard_forward/{tag}", shard_forward_call(
                logits, target, all_weights, lse, ce, grad_ce, options, classes),
                streams_stores=False))
            grad_lse = _meta(rows, dtype=compute) if every_option else None
            specs.append(specialise(f"ce_backward/{tag}", backward_call(
                torch.empty_like(logits), logits, target, weight, lse, grad_ce, grad_lse,
                options)))
    return specs


def adam_specs() -> list[KernelSpec]:
    """The Adam kernel per dtype, plain and with GradScaler + clipping, and the norm kernel."""
    from fastgd.kernels import adam_table as table
    from fastgd.optim.launch import Bucket, adam_call, grad_sumsq_call, new_norm_scratch

    tensors, blocks = 4, 64
    bucket = Bucket(layout=(), grads=(),
                    tensor_table=_meta(tensors * table.TENSOR_COLS, dtype=torch.int64),
                    block_table=_meta(blocks, dtype=torch.int32),
                    counters=_meta(tensors, dtype=torch.int32), first_blocks=[0],
                    block_counts=[blocks], aligned=True, groups=frozenset({0}), keep=[])
    groups = _meta(table.GROUP_COLS, dtype=torch.int64)
    scale, found_inf = _meta(dtype=torch.float32), _meta(dtype=torch.float32)
    sumsq = _meta(dtype=torch.float64)
    scratch = new_norm_scratch(scale, bucket.n_blocks, None)
    specs = []
    for dtype in KERNEL_FLOAT_DTYPES:
        name = TRITON_TYPE_NAMES[dtype]
        specs.append(specialise(f"adam/{name}", adam_call(bucket, groups, dtype, None, None,
                                                          None)))
        specs.append(specialise(f"adam/{name}+scale+clip",
                                adam_call(bucket, groups, dtype, scale, found_inf, sumsq)))
        specs.append(specialise(f"adam_grad_sumsq/{name}", grad_sumsq_call(
            bucket, groups, dtype, scale, scratch, 0, bucket.n_blocks,
            _meta(dtype=torch.float32)), streams_stores=False))
    return specs


def all_specs() -> list[KernelSpec]:
    return cross_entropy_specs() + adam_specs()


# --------------------------------------------------------------------------- compiling
def compile_spec(spec: KernelSpec, arch: int) -> KernelReport:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(spec.signature)
    attrs = {(names.index(a),): ALIGNED for a in spec.aligned}
    source = ASTSource(spec.fn, spec.signature, spec.constexprs, attrs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps}
    )
    usage, sass = _inspect_cubin(compiled.asm["cubin"])
    return KernelReport(
        name=spec.name,
        arch=arch,
        registers=usage.get("REG", 0),
        stack=usage.get("STACK", 0),
        local=usage.get("LOCAL", 0),
        shared=usage.get("SHARED", 0),
        widest_load_bits=_widest(sass, "LDG"),
        widest_store_bits=_widest(sass, "STG"),
        streams_stores=spec.streams_stores,
    )


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _inspect_cubin(cubin: bytes) -> tuple[dict, str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage_text = _run([_cuobjdump(), "--dump-resource-usage", f.name])
        sass = _run([_cuobjdump(), "--dump-sass", f.name])
    line = next((ln for ln in usage_text.splitlines() if "REG:" in ln), "")
    usage = {k: int(v) for k, v in re.findall(r"([A-Z]+):(\d+)", line)}
    return usage, sass


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


_WIDTH = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}


def _widest(sass: str, op: str) -> int:
    """Widest global access of kind ``op`` (LDG/STG) in bits; a plain ``LDG.E`` is 32-bit."""
    widest = 0
    for match in re.finditer(rf"\b{op}\.E((?:\.[A-Z0-9]+)*)", sass):
        bits = 32
        for part in match.group(1).split("."):
            bits = _WIDTH.get(part, bits)
        widest = max(widest, bits)
    return widest
