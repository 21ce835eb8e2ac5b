"""Parameters sharded by torch.distributed (FSDP2's ``fully_shard``, tensor parallel, any
``DTensor``): the optimizer updates each rank's local shards and never sees a DTensor inside a
launch.

* :func:`local_view` unwraps a parameter, its gradient and its moments to their local shards
  (views of the same storage, so the update lands in the DTensors). The moments themselves stay
  DTensors with the parameter's mesh and placements -- ``torch.zeros_like`` of a DTensor is one
  -- which is what lets DCP's ``get_state_dict`` / ``dcp.save`` / ``dcp.load`` save, reshard and
  restore them.
* :func:`norm_groups`: the process groups over which a local sum of squared gradient elements
  must be summed to give the whole tensor's -- one per mesh dimension that shards the gradient;
  replicated dimensions hold copies and are not summed.

Nothing here is home-made sharding: the layout is torch's, read from the DTensor.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidValueError
from ..guard import is_dtensor

STATE_TENSORS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def local_view(param: Tensor, grad: Tensor, state: dict) -> tuple[Tensor, Tensor, dict]:
    """``(param, grad, state)`` with every DTensor replaced by its local shard; plain tensors
    pass through. The state dict returned is a new one (``step`` is the same tensor object, so
    an update of it in place is kept)."""
    if not is_dtensor(param):
        return param, grad, state
    if is_dtensor(grad) and any(p.is_partial() for p in grad.placements):
        raise InvalidValueError(
            f"the gradient of a DTensor parameter has a Partial placement {grad.placements}: "
            f"its shards are not yet summed; reduce it first (grad.redistribute(...)) -- FSDP2 "
            f"and tensor parallel gradients are reduced by backward")
    local_state = dict(state)
    for key in STATE_TENSORS:
        if is_dtensor(local_state.get(key)):
            local_state[key] = local_state[key].to_local()
    return param.to_local(), grad.to_local() if is_dtensor(grad) else grad, local_state


def norm_groups(grad: Tensor) -> tuple:
    """The process groups to sum ``grad``'s local sum of squares over (empty for a plain
    tensor): one per mesh dimension whose placement shards the tensor (a Partial one is refused
    by :func:`local_view`)."""
    if not is_dtensor(grad):
        return ()
    mesh = grad.device_mesh
    return tuple(mesh.get_group(dim) for dim, placement in enumerate(grad.placements)
                 if not placement.is_replicate())


def sum_over(total: Tensor, groups: tuple) -> Tensor:
    """All-reduce ``total`` (a local sum) in place over each of ``groups``: on the device, no
    host sync."""
    for group in groups:
        torch.distributed.all_reduce(total, group=group)
    return total
