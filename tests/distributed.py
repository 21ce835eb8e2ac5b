"""Multi-process tests on one machine: ``run_ranks(fn, world_size, *args)`` starts ``world_size``
processes with the gloo backend (CPU), each calling ``fn(rank, world_size, *args)`` inside an
initialised process group, and fails the calling test -- never hangs it -- when a rank raises,
dies or runs past ``timeout``.

Each call meets at a rendezvous file of its own (no port to race for). ``fn`` must be importable
by name (a module-level function of a test module): the ranks are started with ``spawn``, which
pickles it by reference. The ranks inherit the environment, TRITON_INTERPRET included, so they
run the interpreted kernels as the test session does.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, fn, world_size: int, rendezvous: str, args: tuple) -> None:
    import torch

    torch.set_num_threads(1)  # the ranks share the machine's cores
    # a file rendezvous: no port to race for between choosing it and binding it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # no rank tears down while another still has collectives in flight
    finally:
        dist.destroy_process_group()
    # A rank that succeeded leaves without the interpreter's finalisation: gloo's worker threads
    # can still hold work objects then, and tearing them down at exit sometimes aborts the
    # process (SIGABRT, "terminate called without an active exception"; pytorch#179291),
    # failing a test that passed. (A rank that raised goes on to spawn's error report.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, world_size: int, *args, timeout: float = 180.0) -> None:
    rendezvous = tempfile.mktemp(prefix="fastgd-rendezvous-")  # must not exist yet
    context = mp.start_processes(_rank_main, args=(fn, world_size, rendezvous, args),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        # join raises ProcessRaisedException / ProcessExitedException when a rank fails
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{fn.__name__} on {world_size} ranks ran past {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
        if os.path.exists(rendezvous):
            os.remove(rendezvous)
