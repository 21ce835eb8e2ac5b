"""One Adam step over every parameter with a gradient, and the launch tables it keeps from step
to step: :class:`LaunchCache`, owned by the optimizer (fastgd.optim.adam).

A step sends each parameter one of two ways: the kernels (one Adam launch per (device, dtype),
through fastgd.optim.launch) where the backend runs them and the dtype is one they handle, else
torch's functional Adam (fastgd.optim.torch_path) per (device, param group). With clipping, the
norm is summed over both ways and every device first, and each launch reads it on the device.
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import backend
from . import launch, sharding, torch_path

KERNEL_DTYPES = launch.KERNEL_DTYPES + (torch.complex64, torch.complex128)  # as real views


class Entry(NamedTuple):
    """A parameter with a gradient this step; the gradient and the state were checked to fit."""

    group: int  # its param group's index
    param: Tensor
    grad: Tensor
    state: dict
    name: str  # how messages name the parameter


class _Split(NamedTuple):
    """One step's entries by the way they are updated, as local tensors (a DTensor's shard)."""

    kernel_works: dict  # (device, dtype) -> [launch.Work]: one Adam launch each
    torch_entries: dict  # (device, group index) -> [Entry]: one torch_path call each
    # (group index, the process groups a local sum of squares is summed over) -> local grads
    norm_parts: dict


class LaunchCache:
    """The kernel path's tables, reused by the next step; each is rebuilt only when an address,
    a size or a value in it changed (launch.prepare_bucket, group_table and new_norm_scratch
    compare). Tables for a (device, dtype) without gradients this step stay for a later one."""

    def __init__(self) -> None:
        self.buckets: dict[tuple, launch.Bucket] = {}  # (device, dtype) -> its launch's tables
        self.group_tables: dict[torch.device, launch.GroupTable] = {}  # per device
        self.norm_scratch: dict[torch.device, launch.NormScratch] = {}  # per device
        # (device, group) -> the addresses and layouts the torch path's tensors were checked in
        self.torch_layouts: dict[tuple, tuple] = {}

    def step(self, param_groups: list[dict], entries: list[Entry], grad_scale: Optional[Tensor],
             found_inf: Optional[Tensor]) -> Optional[Tensor]:
        """Update ``entries`` (``grad_scale`` / ``found_inf``: a GradScaler's, or None). Returns
        the clipping norm; None when no clipping group has a gradient."""
        split = _split(param_groups, entries)
        self._guard_torch_path(split.torch_entries)
        self._refresh_tables(param_groups, split.kernel_works)
        clipping = {i for i, g in enumerate(param_groups) if g["max_grad_norm"] is not None}
        sumsq, norm = self._global_sumsq(split, clipping, grad_scale)

        for key, works in split.kernel_works.items():
            device, _ = key
            bucket = self.buckets[key]
            launch.launch_adam(
                bucket, self.group_tables[device].table, works[0].param,
                _to(grad_scale, device), _to(found_inf, device),
                sumsq.get(device) if bucket.groups & clipping else None,
            )
            for w in works:
                if w.writeback is not None:
                    w.writeback.copy_(w.param)

        for (device, index), items in split.torch_entries.items():
            group = param_groups[index]
            coef = None
            if index in clipping:
                coef = torch_path.clip_coefficient(sumsq[device], group["max_grad_norm"])
            torch_path.adam_group_step(group, [e.param for e in items], [e.grad for e in items],
                                       [e.state for e in items], grad_scale, found_inf, coef)
        return norm

    def _guard_torch_path(self, torch_entries: dict) -> None:
        """The launch guard for the tensors torch's Adam updates, rerun only when an address or
        a layout changed since the last step (as the kernels' tables are rebuilt): the checks
        read metadata tensor by tensor, and their cost would otherwise grow with every step."""
        for key, items in torch_entries.items():
            layout = tuple(_layout(e) for e in items)
            if self.torch_layouts.get(key) == layout:
                continue
            for e in items:
                if e.param.device.type != "meta":  # torch steps meta tensors without memory
                    launch.check_memory(e.name, e.param, {"gradient": e.grad, **{
                        k: e.state.get(k) for k in launch.STATE_KEYS}}, e.state["step"],
                        same_strides=False)  # torch's ops follow any strides
            self.torch_layouts[key] = layout

    def _refresh_tables(self, param_groups: list[dict], kernel_works: dict) -> None:
        """The tensor tables of this step's launches, and the group table of their devices."""
        for key, works in kernel_works.items():
            self.buckets[key] = launch.prepare_bucket(works, self.buckets.get(key))
        like = {}  # device -> a parameter there (the group table is per device, not per dtype)
        for (device, _), works in kernel_works.items():
            like.setdefault(device, works[0].param)
        for device, param in like.items():
            self.group_tables[device] = launch.group_table(param_groups, param,
                                                           self.group_tables.get(device))

    def _global_sumsq(self, split: _Split, clipping: set,
                      grad_scale: Optional[Tensor]) -> tuple[dict, Optional[Tensor]]:
        """Per device, the float64 sum of squares of all clipped gradients of all devices and,
        for sharded (DTensor) gradients, of all ranks; and the norm (float32, on the first
        device). Sharded gradients: local sums of squares, then one all-reduce of the scalar
        over each mesh dimension that shards them -- on the device, no host sync."""
        if not clipping:
            return {}, None
        reductions = {groups for index, groups in split.norm_parts if index in clipping}
        if len(reductions) > 1:
            return self._sumsq_by_sharding(split, clipping, grad_scale)
        per_device, norm = self._local_sumsq(split, clipping, grad_scale)
        groups = next(iter(reductions), ())
        if groups and per_device:
            for total in {id(t): t for t in per_device.values()}.values():
                sharding.sum_over(total, groups)
            norm = next(iter(per_device.values())).sqrt().float()
        return per_device, norm

    def _sumsq_by_sharding(self, split: _Split, clipping: set,
                           grad_scale: Optional[Tensor]) -> tuple[dict, Optional[Tensor]]:
        """Gradients sharded in different ways (e.g. tensor-parallel and replicated ones on one
        mesh): each kind summed locally with torch ops and all-reduced over its own process
        groups, then added (one device per rank, as torch.distributed runs)."""
        totals = []
        for (index, groups), grads in split.norm_parts.items():
            if index in clipping and grads:
                part = torch_path.grad_sumsq(grads, _to(grad_scale, grads[0].device))
                totals.append(sharding.sum_over(part, groups))
        total = sum(totals[1:], totals[0])
        per_device = {}
        for device in {key[0] for key in split.kernel_works} | {key[0] for key in
                                                                  split.torch_entries}:
            per_device[device] = total.to(device, non_blocking=True)
        return per_device, total.sqrt().float()

    def _local_sumsq(self, split: _Split, clipping: set,
                     grad_scale: Optional[Tensor]) -> tuple[dict, Optional[Tensor]]:
        """:meth:`_global_sumsq` over this rank's tensors (their local shards)."""
        per_device: dict = {}
        norms: dict = {}
        by_device: dict = defaultdict(list)  # device -> [(bucket, a tensor of its dtype)]
        for key, works in split.kernel_works.items():
            bucket = self.buckets[key]
            if bucket.groups & clipping:
                by_device[key[0]].append((bucket, works[0].param))
        for device, launches in by_device.items():
            like = launches[0][1]
            n_partials = sum(b.n_blocks for b, _ in launches)
            scratch = launch.new_norm_scratch(like, n_partials, self.norm_scratch.get(device))
            self.norm_scratch[device] = scratch
            norms[device] = launch.launch_grad_sumsq(
                launches, self.group_tables[device].table, scratch, _to(grad_scale, device),
                like)
            per_device[device] = scratch.sumsq
        torch_grads: dict = defaultdict(list)
        for (device, index), items in split.torch_entries.items():
            if index in clipping:
                torch_grads[device] += [e.grad for e in items]
        for device, grads in torch_grads.items():
            part = torch_path.grad_sumsq(grads, _to(grad_scale, device))
            if device in per_device:  # a dtype the kernels skip, beside kernel buckets
                per_device[device].add_(part)
            else:
                per_device[device] = part
        if not per_device:
            return {}, None
        if len(per_device) == 1 and norms and not torch_grads:  # the usual case: one launch
            (device, _), = per_device.items()
            return per_device, norms[device]
        first = next(iter(per_device))
        total = sum(s.to(first, non_blocking=True) for s in per_device.values())
        for device in list(per_device):
            if device in norms:  # the kernels read their device's scratch buffer
                per_device[device].copy_(total, non_blocking=True)
            else:
                per_device[device] = total.to(device, non_blocking=True)
        return per_device, total.sqrt().float()


def _layout(e: Entry) -> tuple:
    """What the launch guard's verdict on an entry depends on beyond the per-step checks of
    shape and dtype: each tensor's address (which moves when storage is replaced or freed) and
    strides. (Reading storage sizes here would cost more than the checks it saves.)"""
    tensors = (e.param, e.grad, e.state["step"], *(e.state.get(k) for k in launch.STATE_KEYS))
    return tuple((t.data_ptr(), t.stride()) if t is not None and t.device.type != "meta"
                 else None for t in tensors)


def _split(param_groups: list[dict], entries: list[Entry]) -> _Split:
    """Each entry to the kernels or to torch's Adam (the launch guard runs in
    LaunchCache._guard_torch_path for the latter, in launch.prepare_bucket for the former)."""
    split = _Split(defaultdict(list), defaultdict(list), defaultdict(list))
    on_kernels: dict = {}  # device -> whether the kernels run there (asked once per device)
    for sharded in entries:
        param, grad, state = sharding.local_view(sharded.param, sharded.grad, sharded.state)
        e = sharded._replace(param=param, grad=grad, state=state)
        split.norm_parts[(e.group, sharding.norm_groups(sharded.grad))].append(grad)
        p = e.param
        if p.device not in on_kernels:
            on_kernels[p.device] = backend.uses_kernels(p)
        if on_kernels[p.device] and p.dtype in KERNEL_DTYPES:
            work = launch.make_work(p, e.grad, e.state, e.group,
                                    param_groups[e.group]["amsgrad"], e.name)
            split.kernel_works[(p.device, work.param.dtype)].append(work)
        else:
            split.torch_entries[(p.device, e.group)].append(e)
    return split


def _to(t: Optional[Tensor], device) -> Optional[Tensor]:
    """A GradScaler scalar as the kernels read it: float32, 0-dim, on ``device``."""
    if t is None:
        return None
    return t.to(device=device, dtype=torch.float32, non_blocking=True).reshape(())
