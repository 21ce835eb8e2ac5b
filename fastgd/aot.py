"""Compile fastgd's Triton kernels for NVIDIA GPUs without a GPU, and read what the compiler made.

Each launcher module exposes ``aot_specs()``: a list of :class:`KernelSpec` with the argument
specialisations a real launch gets for typical shapes (16-byte aligned pointers, strides divisible
by 16). ``python -m fastgd.aot`` compiles all of them for sm_80 and sm_90 and prints, per kernel,
registers, spills (local memory), shared memory and the widest global load/store in the SASS.

Must run where ``TRITON_INTERPRET`` is unset: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

# Modules whose launchers define aot_specs(); a new kernel module adds itself here.
AOT_MODULES = ["fastgd.losses.cross_entropy_ops", "fastgd.optim.launch"]

ALIGNED = [["tt.divisibility", 16]]


@dataclasses.dataclass
class KernelSpec:
    name: str  # a readable case name, e.g. "ce_forward/bf16"
    fn: Any  # the @triton.jit function
    signature: dict  # argument name -> Triton type string ("*bf16", "i32", "constexpr", ...)
    constexprs: dict  # constexpr name -> value
    aligned: tuple = ()  # argument names a real launch sees as 16-divisible (pointers, strides)
    num_warps: int = 4
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


def all_specs() -> list[KernelSpec]:
    specs = []
    for module in AOT_MODULES:
        specs.extend(importlib.import_module(module).aot_specs())
    return specs


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("fastgd.aot: unset TRITON_INTERPRET; interpreted kernels cannot be compiled",
              file=sys.stderr)
        return 2
    reports = [compile_spec(s, arch) for arch in args.arch for s in all_specs()]
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in reports], indent=1))
    else:
        print(f"{'kernel':34} {'sm':>3} {'regs':>5} {'local':>6} {'smem':>6} {'ld bits':>8} {'st bits':>8}")
        for r in reports:
            print(f"{r.name:34} {r.arch:>3} {r.registers:>5} {r.local:>6} {r.shared:>6} "
                  f"{r.widest_load_bits:>8} {r.widest_store_bits:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
