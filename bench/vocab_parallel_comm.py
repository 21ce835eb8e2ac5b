"""Bytes of communication per rank for a vocabulary-parallel cross-entropy, measured.

    python -m bench.vocab_parallel_comm [--ranks 2] [--rows 4096] [--classes 32768]
        [--dtype float32|bfloat16] [--label-smoothing 0.0]

Each rank holds a ``Shard(-1)`` slice of the logits (a ``DTensor``), as a ``ColwiseParallel`` LM
head with ``use_local_output=False`` leaves them. For one forward + backward of each provider the
collectives issued on this rank are recorded by a ``TorchDispatchMode`` (which sees both
``torch.distributed``'s in-place ops and the functional collectives DTensor uses), and the bytes
of the tensors each collective returns are summed: for an all-reduce that is the reduced tensor,
for an all-gather the gathered one. (A ring all-reduce sends about ``2 (W - 1) / W`` times its
tensor over each rank's link.)

Providers: ``fastgd.cross_entropy`` on the DTensor; torch's ``loss_parallel()`` with
``F.cross_entropy``; and gathering the logits (``full_tensor()``) and then any unsharded loss.
CPU with gloo here; the counts do not depend on the device.
"""
from __future__ import annotations

import argparse
import collections
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

PROVIDERS = ("fastgd.cross_entropy", "torch loss_parallel()", "gather the logits")
COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional")


class CollectiveBytes(TorchDispatchMode):
    """Counts the collectives dispatched while active and the bytes of the tensors they return."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **(kwargs or {}))
        if any(issubclass(t, DTensor) for t in types):
            # modes run before subclasses: step aside so DTensor desugars the op into local ops
            # and collectives, which then come back here one by one
            return NotImplemented
        out = func(*args, **(kwargs or {}))
        # wait_tensor and _wrap_tensor_autograd share the namespace but move nothing
        if (func.namespace in COLLECTIVE_NAMESPACES
                and not func.__name__.startswith(("wait", "_wrap"))):
            self.calls[func.__name__] += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tree_leaves(out)
                              if isinstance(t, torch.Tensor))
        return out


def _loss(provider: str, logits, target, smoothing: float):
    import torch.nn.functional as F
    from torch.distributed.tensor.parallel import loss_parallel

    import fastgd

    if provider == "fastgd.cross_entropy":
        return fastgd.cross_entropy(logits, target, label_smoothing=smoothing)
    if provider == "torch loss_parallel()":
        with loss_parallel():  # its backward must run inside the context too
            F.cross_entropy(logits, target, label_smoothing=smoothing).backward()
        return None
    return F.cross_entropy(logits.full_tensor(), target, label_smoothing=smoothing)


def _measure(provider: str, mesh, rows: int, classes: int, dtype,
             smoothing: float) -> CollectiveBytes:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.manual_seed(0)
    full = torch.randn(rows, classes, dtype=dtype)
    target = torch.randint(0, classes, (rows,))
    logits = distribute_tensor(full, mesh, [Shard(1)]).requires_grad_()
    if provider == "torch loss_parallel()":  # which takes the target replicated, made here
        target = distribute_tensor(target, mesh, [Replicate()])
    counter = CollectiveBytes()
    with counter:
        loss = _loss(provider, logits, target, smoothing)
        if loss is not None:
            loss.backward()
    return counter


def _attempt(provider: str, *args):
    """The counts, or the first line of the error where the provider refuses the case (torch
    2.13's loss_parallel() with label smoothing)."""
    try:
        return _measure(provider, *args)
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0][:120]


def _rank(rank: int, world_size: int, rendezvous: str, rows: int, classes: int,
          dtype_name: str, smoothing: float) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world_size)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        dtype = getattr(torch, dtype_name)
        results = [(p, _attempt(p, mesh, rows, classes, dtype, smoothing)) for p in PROVIDERS]
        if rank == 0:
            from .machine import current

            m = current()
            print(f"# collectives per rank, one forward + backward: N={rows}, V={classes}, "
                  f"{dtype_name} logits Shard(-1) over {world_size} ranks (gloo), label_smoothing "
                  f"{smoothing}; torch "
                  f"{m.torch}, commit {m.commit}, {m.date}")
            print("| provider | collectives | bytes returned per rank |")
            print("|---|---|---:|")
            for provider, c in results:
                if isinstance(c, str):
                    print(f"| {provider} | fails: {c} | |")
                    continue
                calls = ", ".join(f"{n} x{k}" for n, k in sorted(c.calls.items()))
                print(f"| {provider} | {calls} | {c.bytes:,} |")
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    args = parser.parse_args(argv)
    rendezvous = tempfile.mktemp(prefix="fastgd-bench-")
    mp.start_processes(_rank, args=(args.ranks, rendezvous, args.rows, args.classes, args.dtype,
                                      args.label_smoothing),
                       nprocs=args.ranks, start_method="spawn")


if __name__ == "__main__":
    main()
