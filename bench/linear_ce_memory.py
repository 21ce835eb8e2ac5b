"""Peak memory and time of the LM head's loss, forward + backward, against what a user would
pick instead -- each provider in a fresh process, so the resident-set high-water mark (CPU) or
``torch.cuda.max_memory_allocated`` (GPU) above the inputs is that call's alone.

    python -m bench.linear_ce_memory [--rows 8192] [--classes 32768] [--hidden 64]
        [--dtype float32] [--repeats 2] [--chunks 64 256]

Providers: fastgd's default, fastgd at each ``--chunks`` row count, torch 2.13's
``F.linear_cross_entropy`` on its reference path (``options=None``: the logits materialised) and
chunked (``options=LinearCrossEntropyOptions()``), ``F.cross_entropy(F.linear(...))``, and
Liger-Kernel / Cut Cross-Entropy where importable (both are CUDA-only Triton code: on a CPU they
are reported as not run). The time is the wall clock of the call after one warm-up on the same
shapes; memory is measured in a separate first call of each process (the high-water mark cannot
be reset). The commit, torch version and machine go into the header line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

PROVIDERS = ("fastgd", "torch F.linear_cross_entropy (reference)",
             "torch F.linear_cross_entropy (chunked)", "F.cross_entropy(F.linear(...))",
             "liger", "cut-cross-entropy")

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch, torch.nn.functional as F
    provider, n, v, h, dtype_name, chunk = sys.argv[1:7]
    n, v, h, chunk = int(n), int(v), int(h), int(chunk)
    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)

    def loss_fn():
        if provider == "fastgd":
            import fastgd
            return lambda x, w, t: fastgd.linear_cross_entropy(x, w, t, chunk_size=chunk or None)
        if provider.startswith("torch F.linear_cross_entropy"):
            if not hasattr(F, "linear_cross_entropy"):
                raise RuntimeError("this torch has no F.linear_cross_entropy")
            options = (torch.nn.LinearCrossEntropyOptions() if "chunked" in provider else None)
            return lambda x, w, t: F.linear_cross_entropy(x, w, t, options=options)
        if provider == "F.cross_entropy(F.linear(...))":
            return lambda x, w, t: F.cross_entropy(F.linear(x, w).float(), t)
        if provider == "liger":
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            module = LigerFusedLinearCrossEntropyLoss()
            return lambda x, w, t: module(w, x, t)
        if provider == "cut-cross-entropy":
            from cut_cross_entropy import linear_cross_entropy
            return lambda x, w, t: linear_cross_entropy(x, w, t)
        raise ValueError(provider)

    def inputs(rows, classes):
        x = torch.randn(rows, h, device=device, dtype=dtype).requires_grad_()
        w = (torch.randn(classes, h, device=device, dtype=dtype) * 0.1).requires_grad_()
        t = torch.randint(0, classes, (rows,), device=device)
        return x, w, t

    def peak():
        if device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    fn = loss_fn()
    small = inputs(4, 64)
    fn(*small).backward()  # library start-up allocations are not the call's memory
    x, w, t = inputs(n, v)
    before = peak()
    fn(x, w, t).backward()
    extra = peak() - before
    x.grad = w.grad = None
    start = time.perf_counter()
    fn(x, w, t).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"extra_bytes": extra, "seconds": time.perf_counter() - start,
                      "device": device}))
""")


def _measure(provider: str, args, chunk: int) -> dict:
    # never the Triton interpreter: on a CPU fastgd's PyTorch path is what a user runs
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _CHILD, provider, str(args.rows),
                           str(args.classes), str(args.hidden), args.dtype, str(chunk)],
                          capture_output=True, text=True, timeout=args.timeout, env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": last[:100]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.linear_ce_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="*", default=[],
                        help="also run fastgd with these chunk_size values")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    from .machine import current

    m = current()
    runs = [("fastgd", 0, "fastgd (default chunk)")]
    runs += [("fastgd", c, f"fastgd (chunk_size={c})") for c in args.chunks]
    runs += [(p, 0, p) for p in PROVIDERS[1:]]
    print(f"# linear cross-entropy forward + backward, N={args.rows} V={args.classes} "
          f"H={args.hidden} {args.dtype}; torch {m.torch}, commit {m.commit}, {m.date}, "
          f"{m.gpu}; each provider in a fresh process, {args.repeats} runs")
    print("| provider | extra peak memory (MiB) | time (s) |")
    print("|---|---:|---:|")
    for provider, chunk, label in runs:
        results = [_measure(provider, args, chunk) for _ in range(args.repeats)]
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            print(f"| {label} | not run: {errors[0]} | |")
            continue
        mib = [r["extra_bytes"] / 2**20 for r in results]
        secs = [r["seconds"] for r in results]
        print(f"| {label} | {' / '.join(f'{x:.0f}' for x in mib)} | "
              f"{' / '.join(f'{x:.2f}' for x in secs)} |", flush=True)


if __name__ == "__main__":
    main()
