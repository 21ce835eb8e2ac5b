"""The PyTorch path of fastgd's Adam/AdamW (CPU without the Triton interpreter, or forced with
``fastgd.force_backend("torch")``): torch.optim's own functional Adam on fastgd's state -- its
fused implementation on a CPU (the single-tensor one for complex parameters).

The extras of fastgd's kernels are done around it, with tensor operations only: unscaling by a
GradScaler's scale and clipping by the global norm work on copies of the gradients (the user's
``.grad`` stays untouched, as with the kernels). A step that a GradScaler marked with
``found_inf`` is skipped by reading the flag when it lives in host memory; on a GPU (this path
forced there) torch's fused Adam skips it on the device instead.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam

from .. import backend


def grad_sumsq(grads: list[Tensor], grad_scale: Optional[Tensor]) -> Tensor:
    """float64 sum of squares of the unscaled gradients (0-dim, on the gradients' device)."""
    total = torch.zeros((), dtype=torch.float64, device=grads[0].device)
    for g in grads:
        g = torch.view_as_real(g) if g.is_complex() else g
        total += g.double().square().sum()
    if grad_scale is not None:
        total /= grad_scale.to(total.device).double().square()
    return total


def clip_coefficient(sumsq: Tensor, max_norm: float) -> Tensor:
    """``min(1, max_norm / (norm + 1e-6))`` in float32, as ``clip_grad_norm_`` computes it for
    float32 gradients."""
    norm = sumsq.sqrt().float()
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def adam_group_step(
    group: dict,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    grad_scale: Optional[Tensor],
    found_inf: Optional[Tensor],
    clip_coef: Optional[Tensor],
) -> None:
    """One step of the tensors of one param group on one device."""
    device = params[0].device
    fused = False
    if found_inf is not None:
        if backend.can_check_on_host(found_inf):
            if float(found_inf) != 0:
                return
        else:
            fused = True  # torch's fused kernel reads found_inf on the device
            found_inf = found_inf.to(device, non_blocking=True)
    if grad_scale is not None:
        grads = [g / grad_scale.to(g.device) for g in grads]
    if clip_coef is not None:
        grads = [g * clip_coef.to(g.device) for g in grads]
    if fused:  # found_inf lives on the device: only the fused kernel can read it there
        _torch_adam(group, params, grads, states, fused=True, found_inf=found_inf)
        return
    # On a CPU, torch's fused Adam (one pass over each tensor, its math in float32 for 16-bit
    # tensors, float64 bias corrections) is several times faster than the single-tensor loop.
    # It takes no complex parameters, and on a CPU it gives wrong updates for tensors that are
    # not contiguous (torch 2.13, a sliced parameter): those take the single-tensor loop.
    fusable = [device.type == "cpu" and _fusable(p, g, s) for p, g, s in zip(params, grads, states)]
    for use_fused in (True, False):
        chosen = [i for i, ok in enumerate(fusable) if ok == use_fused]
        if chosen:
            _torch_adam(group, [params[i] for i in chosen], [grads[i] for i in chosen],
                        [states[i] for i in chosen], fused=use_fused, found_inf=None)


def _fusable(param: Tensor, grad: Tensor, state: dict) -> bool:
    tensors = (param, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"))
    return not param.is_complex() and all(t.is_contiguous() for t in tensors if t is not None)


def _torch_adam(group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict], *,
                fused: bool, found_inf: Optional[Tensor]) -> None:
    amsgrad = group["amsgrad"]
    beta1, beta2 = group["betas"]
    # The kernels' math is float32 for 16-bit tensors (torch's own single-tensor 16-bit Adam
    # computes in the parameter dtype, where the default eps=1e-8 underflows to 0 in float16 and
    # a zero second moment divides by zero): without the fused kernel, which computes in float32
    # itself, run torch's update on float32 copies, then round back.
    work = [_Upcast(p, g, s, amsgrad, upcast=not fused)
            for p, g, s in zip(params, grads, states)]
    torch_adam(
        [w.param for w in work], [w.grad for w in work],
        [w.exp_avg for w in work], [w.exp_avg_sq for w in work],
        [w.max_exp_avg_sq for w in work] if amsgrad else [],
        [s["step"] for s in states],
        foreach=False,
        # Host-side step counts keep torch's exact float64 bias corrections on the CPU; on a GPU
        # the capturable form avoids reading the step back.
        capturable=backend.step_device(params[0]).type != "cpu" and not fused,
        fused=fused,
        found_inf=found_inf,
        has_complex=any(p.is_complex() for p in params),
        decoupled_weight_decay=group["decoupled_weight_decay"],
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=group["maximize"],
    )
    for w in work:
        w.store()


class _Upcast:
    """One parameter's tensors in float32 when it is 16-bit (as the kernels compute), else the
    tensors themselves; :meth:`store` rounds the results back (round to nearest even)."""

    def __init__(self, param: Tensor, grad: Tensor, state: dict, amsgrad: bool,
                 upcast: bool = True) -> None:
        self.originals = [param, state["exp_avg"], state["exp_avg_sq"],
                          state["max_exp_avg_sq"] if amsgrad else None]
        self.upcast = upcast and param.dtype in (torch.float16, torch.bfloat16)
        up = (lambda t: t.float() if t is not None else None) if self.upcast else (lambda t: t)
        self.param, self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq = map(up, self.originals)
        self.grad = up(grad)

    def store(self) -> None:
        if self.upcast:
            for original, computed in zip(self.originals, (self.param, self.exp_avg,
                                                           self.exp_avg_sq, self.max_exp_avg_sq)):
                if original is not None:
                    original.copy_(computed)
