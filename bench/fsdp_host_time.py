"""Host time of ``optimizer.step()`` on FSDP2 parameters, by number of parameter tensors.

    python -m bench.fsdp_host_time [--ranks 2] [--tensors 50 500 2000] [--steps 20]

torch's AdamW on DTensor parameters pays DTensor dispatch per tensor and per op
(pytorch#134191); fastgd unwraps each parameter to its local shard once per step and updates
them all together. The model is ``n / 2`` ``Linear(16, 16)`` layers (weight and bias: ``n``
tensors) under one ``fully_shard``; the gradients come from one real backward and stay fixed
while ``step()`` is timed (median of ``--steps`` after 3 warm-up steps, rank 0's wall clock,
ranks in step through a barrier). The tensors are tiny on purpose: the time is the host's.

Where it runs (CPU with gloo here; CUDA with NCCL where there is a GPU) goes into the output
line with the commit. On CPU fastgd runs its PyTorch path (torch's functional Adam on the local
shards), so the comparison there is of the host work around the arithmetic.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROVIDERS = ("fastgd", "torch foreach", "torch fused")


def _optimizer(provider: str, params):
    import fastgd

    if provider == "fastgd":
        return fastgd.AdamW(params, lr=1e-3)
    return torch.optim.AdamW(params, lr=1e-3, foreach=provider == "torch foreach",
                             fused=provider == "torch fused")


def _time_steps(provider: str, n_tensors: int, steps: int, device: str) -> float:
    from torch.distributed.fsdp import fully_shard

    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(n_tensors // 2)])
    model.to(device)
    fully_shard(model)
    model(torch.randn(4, 16, device=device)).sum().backward()
    opt = _optimizer(provider, model.parameters())
    times = []
    for i in range(3 + steps):
        dist.barrier()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step()
        elapsed = time.perf_counter() - start  # the host's time: step() returns before the GPU
        if i >= 3:
            times.append(elapsed)
    return statistics.median(times)


def _rank(rank: int, world_size: int, port: int, tensors: list, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank,
                            world_size=world_size)
    try:
        rows = [(n, provider, _time_steps(provider, n, steps, device))
                for n in tensors for provider in PROVIDERS]
        if rank == 0:
            from .machine import current

            m = current()
            print(f"# step() host time, FSDP2 on {world_size} ranks ({device}, {m.gpu}), "
                  f"torch {m.torch}, commit {m.commit}, {m.date}")
            print("| parameter tensors | " + " | ".join(PROVIDERS) + " |")
            print("|---|" + "---|" * len(PROVIDERS))
            for n in tensors:
                cells = [f"{t * 1e3:.2f} ms" for k, p, t in rows if k == n]
                print(f"| {n} | " + " | ".join(cells) + " |")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fsdp_host_time",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--tensors", type=int, nargs="+", default=[50, 500, 2000])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(args.ranks, port, args.tensors, args.steps),
                       nprocs=args.ranks, start_method="spawn")


if __name__ == "__main__":
    main()
