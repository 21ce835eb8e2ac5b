"""Static GPU-code report: what the compiler makes of every fastgd kernel, without a GPU.

``python -m bench.static [--arch 80 90] [--out DIR]`` compiles every kernel that
:func:`bench.aot.all_specs` lists -- built by the launchers' own argument builders, with the
specialisations a real launch gets for typical shapes (16-byte aligned pointers, strides divisible
by 16) -- through :func:`bench.aot.compile_spec`, and reports per kernel: registers, stack and
local memory (spills), shared memory, the widest global load and store in the SASS, and whether the
properties the streaming kernels rely on hold: no local memory, 128-bit loads, and 128-bit
stores where the kernel streams its output. Writes ``static_sm<arch>.md`` and ``.json`` into
``--out`` per SM version; exits 1 when a property fails or a kernel does not compile.

Runs without TRITON_INTERPRET (interpreted kernels cannot be compiled); ``python -m bench`` starts
it in a subprocess with that variable removed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from . import aot


@dataclasses.dataclass
class StaticResult:
    name: str
    arch: int
    num_warps: int
    constexprs: dict  # the launch's block sizes and flags
    report: object = None  # bench.aot.KernelReport, None when compiling failed
    error: str = ""


def problems(result: StaticResult) -> list[str]:
    """What breaks the properties fastgd's speed relies on (empty: all hold)."""
    if result.report is None:
        return [f"does not compile: {result.error}"]
    return aot.problems(result.report)


def compile_all(arch: int) -> list[StaticResult]:
    results = []
    for spec in aot.all_specs():
        constexprs = {k: v for k, v in spec.constexprs.items() if isinstance(v, (int, bool, str))}
        result = StaticResult(spec.name, arch, spec.num_warps, constexprs)
        try:
            result.report = aot.compile_spec(spec, arch)
        except Exception as e:  # report it beside the others: a compile error is a finding
            result.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e) else ''}"
        results.append(result)
    return results


def render(results: list[StaticResult], arch: int, versions: str) -> str:
    lines = [
        f"# fastgd kernels as compiled for sm_{arch} (static report, no GPU needed)", "",
        f"- {versions}",
        "- specialisation: what a real launch gets for typical shapes (pointers 16-byte aligned,",
        "  strides divisible by 16), through `bench.aot.compile_spec`",
        "- every kernel streams its inputs: no local memory and 128-bit global loads, and",
        "  128-bit stores when it streams its output too (*stores*: streamed; a per-row result",
        "  may be stored narrow)",
        "", "| kernel | warps | regs | stack/local B | shared B | widest load | widest store "
        "| stores | check |", "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        found = problems(res)
        check = "ok" if not found else "**" + "; ".join(found) + "**"
        r = res.report
        if r is None:
            lines.append(f"| {res.name} | {res.num_warps} | | | | | | | {check} |")
            continue
        lines.append(
            f"| {res.name} | {res.num_warps} | {r.registers} | {r.stack}/{r.local} | {r.shared} "
            f"| {r.widest_load_bits}-bit | {r.widest_store_bits}-bit "
            f"| {'streamed' if r.streams_stores else 'row results'} | {check} |")
    failing = sum(1 for res in results if problems(res))
    lines += ["", f"{len(results)} kernels, {failing} failing a check." if failing
              else f"{len(results)} kernels; every check holds.", ""]
    return "\n".join(lines)


def to_json(results: list[StaticResult]) -> list[dict]:
    out = []
    for res in results:
        entry = {"name": res.name, "arch": res.arch, "num_warps": res.num_warps,
                 "constexprs": res.constexprs, "error": res.error, "problems": problems(res)}
        if res.report is not None:
            entry.update(dataclasses.asdict(res.report))
        out.append(entry)
    return out


def _versions() -> str:
    import torch
    import triton

    from .machine import current

    m = current()
    return f"triton {triton.__version__}, torch {torch.__version__}, commit {m.commit}, {m.date}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90],
                        help="SM versions (default 90: H100/H200; 80: A100)")
    parser.add_argument("--out", type=Path, help="folder for static_sm<arch>.md/.json")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("bench.static: unset TRITON_INTERPRET first; interpreted kernels cannot be compiled",
              file=sys.stderr)
        return 2
    failing = False
    for arch in args.arch:
        results = compile_all(arch)
        text = render(results, arch, _versions())
        print(text)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"static_sm{arch}.md").write_text(text)
            (args.out / f"static_sm{arch}.json").write_text(
                json.dumps(to_json(results), indent=1) + "\n")
        failing |= any(problems(res) for res in results)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
