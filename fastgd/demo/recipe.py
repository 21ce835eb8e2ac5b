"""The two pieces fastgd replaces in a training loop -- the loss and the optimizer step -- built
for one of two *stacks*:

* ``"fastgd"``: ``fastgd.cross_entropy`` (or ``fastgd.linear_cross_entropy``) and
  ``fastgd.AdamW`` with gradient clipping fused into its step;
* ``"torch"``:  ``torch.nn.functional.cross_entropy`` and ``torch.optim.AdamW`` (fused where
  torch supports it) after ``torch.nn.utils.clip_grad_norm_``.

Everything else in the demo is shared, so two runs of the same seed differ only here.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import fastgd

from .model import TinyGPT, decay_groups

STACKS = ("fastgd", "torch")
BETAS = (0.9, 0.95)  # the usual language-model betas: a shorter memory for the second moment
MIN_LR_RATIO = 0.1  # cosine decay ends at a tenth of the peak learning rate

# loss(hidden (B, T, D), head weight (V, D), targets (B, T), num_items) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(stack: str, label_smoothing: float, z_loss: float, fused_linear: bool) -> LossFn:
    """The training loss of ``stack``: the summed cross-entropy of the micro-batch (plus z-loss)
    divided by ``num_items``, the number of target tokens in the *whole* accumulated batch, so
    that the gradients of all micro-batches add up to the gradient of the full batch's mean."""
    if stack == "fastgd" and fused_linear:
        def fused_loss(hidden, weight, targets, num_items):
            return fastgd.linear_cross_entropy(
                hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                label_smoothing=label_smoothing, z_loss=z_loss, num_items=num_items)
        return fused_loss

    if stack == "fastgd":
        def fastgd_loss(hidden, weight, targets, num_items):
            logits = hidden @ weight.t()
            # Nothing but the loss reads the logits (the product saved `hidden` and `weight`),
            # so their memory can hold the gradient.
            return fastgd.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                label_smoothing=label_smoothing, z_loss=z_loss, num_items=num_items,
                inplace_backward=True)
        return fastgd_loss

    def torch_loss(hidden, weight, targets, num_items):
        logits = (hidden @ weight.t()).reshape(-1, weight.shape[0]).float()
        flat = targets.reshape(-1)
        total = F.cross_entropy(logits, flat, reduction="sum", label_smoothing=label_smoothing)
        if z_loss:
            lse = torch.logsumexp(logits, dim=-1)
            total = total + z_loss * torch.where(flat != -100, lse * lse, 0.0).sum()
        return total / num_items
    return torch_loss


class Update:
    """One optimizer step with gradient clipping; ``step()`` returns the gradient norm before
    clipping as a device tensor (no host sync)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor],
                 max_grad_norm: Optional[float], fused_clipping: bool) -> None:
        self.optimizer = optimizer
        self.params = params
        self.max_grad_norm = max_grad_norm
        self.fused_clipping = fused_clipping

    def step(self) -> Optional[torch.Tensor]:
        norm = None
        if self.max_grad_norm is not None and not self.fused_clipping:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        if self.fused_clipping:
            norm = getattr(self.optimizer, "grad_norm", None)
        self.optimizer.zero_grad(set_to_none=True)
        return norm


def make_update(stack: str, model: TinyGPT, lr: float, weight_decay: float,
                max_grad_norm: Optional[float]) -> Update:
    """The optimizer of ``stack`` over ``model`` (the one place that builds it)."""
    groups = decay_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if stack == "fastgd":
        # Clipping happens inside the step: the norm from one reduction, the scale applied in
        # the update kernel, so the gradients are not read and written an extra time.
        optimizer = fastgd.AdamW(groups, lr=lr, betas=BETAS, max_grad_norm=max_grad_norm)
        return Update(optimizer, params, max_grad_norm, fused_clipping=max_grad_norm is not None)
    fused = _torch_has_fused_adamw(params[0].device)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=BETAS, fused=fused or None)
    return Update(optimizer, params, max_grad_norm, fused_clipping=False)


def _torch_has_fused_adamw(device: torch.device) -> bool:
    try:
        probe = torch.zeros(1, device=device, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        torch.optim.AdamW([probe], fused=True).step()
        return True
    except (RuntimeError, ValueError):
        return False


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to the peak over ``warmup`` steps, then cosine decay to ``MIN_LR_RATIO`` of
    it at step ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total))
