"""Launchers of the multi-tensor Adam kernels (kernels/adam.py) and the tables they read.

A step becomes one launch per (device, dtype) -- plus one for the gradient norm when clipping:

* :func:`prepare_bucket` turns the (param, grad, state) of one (device, dtype) into a
  :class:`Bucket`: the tensor table (addresses, sizes, block ranges), the block -> tensor map and
  the per-tensor counters. They are rebuilt only when some address changed since the last step
  (gradients may be new tensors every step, though the caching allocator usually hands back the
  same addresses), which the host sees from ``data_ptr()`` alone: no device sync.
* :func:`group_table`: hyperparameters per param group, rebuilt only when a value changed.
* New tables reach a GPU from pinned host memory with non_blocking copies; the pinned buffer is
  kept alive with the table, so a CUDA graph that captured the copy can replay it.
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from .. import backend, guard
from ..kernels import adam_table as table
from ..dtypes import KERNEL_FLOAT_DTYPES, triton_compute_dtype, triton_dtype
from ..kernel_call import KernelCall
from ..launch_config import ADAM_NORM_REDUCE_BLOCK, adam_launch

KERNEL_DTYPES = KERNEL_FLOAT_DTYPES
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # torch's names, in table order



@dataclasses.dataclass
class Work:
    """One parameter as the kernel sees it: dense real tensors sharing one layout."""

    param: Tensor
    grad: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    max_exp_avg_sq: Optional[Tensor]
    step: Tensor
    group: int
    name: str  # how messages name the parameter
    writeback: Optional[Tensor] = None  # the user's parameter when ``param`` is a dense copy


@dataclasses.dataclass
class Bucket:
    """The tables of one launch (tensors of one device and dtype)."""

    layout: tuple  # per tensor: addresses of param and states, numel, group -- all but the grad
    grads: tuple  # per tensor: the gradient's address
    tensor_table: Tensor
    block_table: Tensor
    counters: Tensor
    first_blocks: list
    block_counts: list
    aligned: bool
    groups: frozenset
    keep: list  # pinned host copies of the tables: alive as long as the tables are

    @property
    def n_blocks(self) -> int:
        return self.first_blocks[-1] + self.block_counts[-1]


def make_work(param: Tensor, grad: Tensor, state: dict, group: int, amsgrad: bool,
              name: str) -> Work:
    """The kernel's view of one parameter (called ``name`` in messages), whose gradient and
    state were checked to fit it this step. Complex tensors become real views; a parameter
    that is not dense is updated through a dense copy; a gradient in another layout is copied
    into the parameter's."""
    tensors = [param, grad, state["exp_avg"], state["exp_avg_sq"],
               state["max_exp_avg_sq"] if amsgrad else None]
    if param.is_complex():
        tensors = [torch.view_as_real(t) if t is not None else None for t in tensors]
    p, g, m, v, v_max = tensors
    writeback = None
    if not _dense(p):
        writeback, p = p, p.contiguous()  # its states were created contiguous: zeros_like rule
    if g.stride() != p.stride():
        g = torch.empty_like(p).copy_(g)
    return Work(p, g, m, v, v_max, state["step"], group, name, writeback)


def check_memory(name: str, param: Tensor, others: dict, step: Tensor,
                 same_strides: bool = True) -> None:
    """The launch guard for one parameter: every tensor in ``others`` (what -> tensor or None)
    has ``param``'s dtype, device, shape (and strides, where the kernel walks them as one),
    and each, ``param`` and the float32 ``step`` own the memory they claim (the kernel reads
    ``numel`` elements from each)."""
    fix = "the optimizer state no longer fits its parameter; start a new optimizer"
    guard.require_tensor(param, name, fix="fastgd updates plain dense tensors")
    for what, t in others.items():
        if t is not None:
            guard.require_tensor(t, f"{what} of {name}", dtype=param.dtype, device=param.device,
                                 shape=param.shape,
                                 strides=param.stride() if same_strides else None, fix=fix)
    guard.require_tensor(step, f"state 'step' of {name}", dtype=torch.float32,
                         device=param.device, shape=(), fix=fix)


def _check_work(w: Work) -> None:
    check_memory(w.name, w.param, {"gradient": w.grad, "exp_avg": w.exp_avg,
                                   "exp_avg_sq": w.exp_avg_sq,
                                   "max_exp_avg_sq": w.max_exp_avg_sq}, w.step)


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the elements fill ``numel`` consecutive slots in some order."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda ss: ss[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def prepare_bucket(works: list[Work], previous: Optional[Bucket]) -> Bucket:
    """The tables of one launch: ``previous``'s when no address, size or group changed; only a
    new tensor table when just gradient addresses did (the usual change between steps)."""
    layout = tuple(
        (w.param.data_ptr(), w.exp_avg.data_ptr(), w.exp_avg_sq.data_ptr(),
         w.max_exp_avg_sq.data_ptr() if w.max_exp_avg_sq is not None else 0,
         w.step.data_ptr(), w.param.numel(), w.group, w.param.stride())
        for w in works
    )
    grads = tuple(w.grad.data_ptr() for w in works)
    like = works[0].param
    if previous is not None and previous.layout == layout and previous.grads == grads:
        return previous
    for w in works:  # some address moved: the launch guard, before any table holds it
        _check_work(w)
    if previous is not None and previous.layout == layout:
        keep: list = []
        tensor_table = _upload(_tensor_rows(works, previous), torch.int64, like, keep)
        return dataclasses.replace(previous, grads=grads, tensor_table=tensor_table,
                                   aligned=_aligned(works), keep=keep)

    block, _ = adam_launch(like.dtype)
    counts = [max(1, -(-w.param.numel() // block)) for w in works]  # empty: still 1 (its step)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    keep = []
    bucket = Bucket(layout, grads, None, None,
                    torch.zeros(len(works), dtype=torch.int32, device=like.device),
                    firsts, counts, _aligned(works), frozenset(w.group for w in works),
                    keep)
    bucket.tensor_table = _upload(_tensor_rows(works, bucket), torch.int64, like, keep)
    block_map = np.repeat(np.arange(len(works), dtype=np.int32), counts)
    bucket.block_table = _upload(torch.from_numpy(block_map), torch.int32, like, keep)
    return bucket


def _tensor_rows(works: list[Work], bucket: Bucket) -> list[int]:
    """The tensor table, row after row, each filled by column name (kernels/adam_table.py)."""
    rows = []
    for w, first, count in zip(works, bucket.first_blocks, bucket.block_counts):
        row = [0] * table.TENSOR_COLS
        row[table.T_PARAM] = w.param.data_ptr()
        row[table.T_GRAD] = w.grad.data_ptr()
        row[table.T_EXP_AVG] = w.exp_avg.data_ptr()
        row[table.T_EXP_AVG_SQ] = w.exp_avg_sq.data_ptr()
        row[table.T_MAX_EXP_AVG_SQ] = (w.max_exp_avg_sq.data_ptr()
                                       if w.max_exp_avg_sq is not None else 0)
        row[table.T_STEP] = w.step.data_ptr()
        row[table.T_NUMEL] = w.param.numel()
        row[table.T_FIRST_BLOCK] = first
        row[table.T_NUM_BLOCKS] = count
        row[table.T_GROUP] = w.group
        rows += row
    return rows


def _aligned(works: list[Work]) -> bool:
    """Every address the kernel streams through is 16-byte aligned: it may then use 128-bit
    accesses."""
    return all(t.data_ptr() % 16 == 0 for w in works
               for t in (w.param, w.grad, w.exp_avg, w.exp_avg_sq, w.max_exp_avg_sq)
               if t is not None)


class GroupTable(NamedTuple):
    """The hyperparameters of every param group, for the tensors of one device."""

    rows: list  # the values, as uploaded: compared to see whether anything changed
    table: Tensor  # on the device
    keep: list  # pinned host copies and moved tensors the table points to


def group_table(param_groups: list[dict], like: Tensor,
                previous: Optional[GroupTable]) -> GroupTable:
    """The group table for tensors like ``like``; ``previous`` when no value changed."""
    keep: list = []
    rows = []
    for group in param_groups:
        row = [0] * table.GROUP_COLS
        row[table.G_FLAGS] = ((table.FLAG_AMSGRAD if group["amsgrad"] else 0)
                              | (table.FLAG_MAXIMIZE if group["maximize"] else 0)
                              | (table.FLAG_DECOUPLED if group["decoupled_weight_decay"] else 0)
                              | (table.FLAG_CLIP if group["max_grad_norm"] is not None else 0))
        beta1, beta2 = group["betas"]
        (row[table.G_LR_VALUE], row[table.G_LR_ADDRESS],
         row[table.G_LR_KIND]) = _hyperparameter(group["lr"], like, keep)
        (row[table.G_BETA1_VALUE], row[table.G_BETA1_ADDRESS],
         row[table.G_BETA1_KIND]) = _hyperparameter(beta1, like, keep)
        (row[table.G_BETA2_VALUE], row[table.G_BETA2_ADDRESS],
         row[table.G_BETA2_KIND]) = _hyperparameter(beta2, like, keep)
        row[table.G_EPS] = _bits(group["eps"])
        row[table.G_WEIGHT_DECAY] = _bits(group["weight_decay"])
        row[table.G_MAX_NORM] = _bits(group["max_grad_norm"] or 0.0)
        rows += row
    if previous is not None and previous.rows == rows:
        return previous
    return GroupTable(rows, _upload(rows, torch.int64, like, keep), keep)


def _hyperparameter(value: Any, like: Tensor, keep: list) -> tuple[int, int, int]:
    """(value, address, kind) columns: a float's value, or where the kernel reads a 0-dim
    tensor."""
    if not isinstance(value, Tensor):
        return _bits(float(value)), 0, table.KIND_VALUE
    if value.device == like.device and value.dtype in (torch.float32, torch.float64):
        kind = (table.KIND_FP32_TENSOR if value.dtype == torch.float32
                else table.KIND_FP64_TENSOR)
        return 0, value.data_ptr(), kind
    if backend.can_check_on_host(value):  # a CPU tensor: reading it costs no sync
        return _bits(float(value)), 0, table.KIND_VALUE
    moved = value.to(like.device, torch.float32, non_blocking=True)
    keep.append(moved)
    return 0, moved.data_ptr(), table.KIND_FP32_TENSOR


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _upload(values, dtype: torch.dtype, like: Tensor, keep: list) -> Tensor:
    """``values`` as a tensor on ``like``'s device, without a host sync."""
    host = values.to(dtype) if isinstance(values, Tensor) else torch.tensor(values, dtype=dtype)
    if backend.can_check_on_host(like):
        return host  # the interpreter reads host memory in place
    host = host.pin_memory()
    keep.append(host)
    return host.to(like.device, non_blocking=True)


# --------------------------------------------------------------------------- launches
@dataclasses.dataclass
class NormScratch:
    """Per-device buffers of the norm pass, reused every step."""

    partials: Tensor  # float64, one per block of the pass
    counter: Tensor  # int32 0-dim, 0 between passes
    sumsq: Tensor  # float64 0-dim result


def new_norm_scratch(like: Tensor, n_partials: int, old: Optional[NormScratch]) -> NormScratch:
    if old is not None and old.partials.numel() >= n_partials:
        return old
    device = like.device
    return NormScratch(torch.empty(max(n_partials, 1), dtype=torch.float64, device=device),
                       torch.zeros((), dtype=torch.int32, device=device),
                       torch.zeros((), dtype=torch.float64, device=device))


def grad_sumsq_call(bucket: Bucket, groups_table: Tensor, dtype: torch.dtype,
                    grad_scale: Optional[Tensor], scratch: NormScratch, partial_offset: int,
                    n_partials: int, norm: Tensor) -> KernelCall:
    """The norm kernel's launch over one bucket (tensors of ``dtype``), writing its partial sums
    from ``partial_offset`` on; the last program of the pass writes ``norm``."""
    from ..kernels.adam import grad_sumsq_kernel

    block, num_warps = adam_launch(dtype)
    return KernelCall(grad_sumsq_kernel, (bucket.n_blocks,), dict(
        tensor_table_ptr=bucket.tensor_table, group_table_ptr=groups_table,
        block_table_ptr=bucket.block_table,
        grad_scale_ptr=grad_scale if grad_scale is not None else scratch.sumsq,
        partials_ptr=scratch.partials, partial_offset=partial_offset, n_partials=n_partials,
        counter_ptr=scratch.counter, sumsq_ptr=scratch.sumsq, norm_ptr=norm,
        DTYPE=triton_dtype(dtype), COMPUTE=triton_compute_dtype(dtype),
        HAS_SCALE=grad_scale is not None, ALIGNED=bucket.aligned, BLOCK=block,
        REDUCE_BLOCK=ADAM_NORM_REDUCE_BLOCK,
    ), num_warps)


def launch_grad_sumsq(
    launches: list[tuple[Bucket, Tensor]], groups_table: Tensor, scratch: NormScratch,
    grad_scale: Optional[Tensor], like: Tensor,
) -> Tensor:
    """Sum of squares of the (unscaled) gradients of clipping groups over ``launches`` (buckets of
    one device, each with a tensor of its dtype); returns the fp32 norm (also in scratch.sumsq
    as a float64 sum of squares)."""
    norm = torch.empty((), dtype=torch.float32, device=like.device)
    n_partials = sum(bucket.n_blocks for bucket, _ in launches)
    offset = 0
    with backend.launch_device(like):
        for bucket, sample in launches:
            grad_sumsq_call(bucket, groups_table, sample.dtype, grad_scale, scratch, offset,
                            n_partials, norm).launch()
            offset += bucket.n_blocks
    return norm


def adam_call(bucket: Bucket, groups_table: Tensor, dtype: torch.dtype,
              grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
              grad_sumsq: Optional[Tensor]) -> KernelCall:
    """The Adam kernel's launch over one bucket (tensors of ``dtype``); an argument the flags
    switch off gets the tensor table (any valid pointer)."""
    from ..kernels.adam import adam_kernel

    block, num_warps = adam_launch(dtype)
    unused = bucket.tensor_table
    return KernelCall(adam_kernel, (bucket.n_blocks,), dict(
        tensor_table_ptr=bucket.tensor_table, group_table_ptr=groups_table,
        block_table_ptr=bucket.block_table, counter_ptr=bucket.counters,
        grad_scale_ptr=grad_scale if grad_scale is not None else unused,
        found_inf_ptr=found_inf if found_inf is not None else unused,
        grad_sumsq_ptr=grad_sumsq if grad_sumsq is not None else unused,
        DTYPE=triton_dtype(dtype), COMPUTE=triton_compute_dtype(dtype),
        HAS_SCALE=grad_scale is not None, HAS_FOUND_INF=found_inf is not None,
        HAS_CLIP=grad_sumsq is not None, ALIGNED=bucket.aligned, BLOCK=block,
    ), num_warps)


def launch_adam(
    bucket: Bucket, groups_table: Tensor, sample: Tensor, grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor], grad_sumsq: Optional[Tensor],
) -> None:
    """One Adam step of every tensor of ``bucket`` (tensors of ``sample``'s device and dtype).
    ``grad_sumsq``: the global sum of squares when some group of the bucket clips."""
    with backend.launch_device(sample):
        adam_call(bucket, groups_table, sample.dtype, grad_scale, found_inf, grad_sumsq).launch()
