"""Shared pieces of the cross-entropy tests: input makers and the three-way comparison
(fastgd vs PyTorch in the same dtype vs float64 truth) under tests/tolerances.py's rule."""
from __future__ import annotations

import torch

import fastgd
from fastgd.reference import reference_cross_entropy
from tolerances import assert_accurate

BLOCK = 4096  # fastgd.launch_config.CE_MAX_BLOCK for 16/32-bit logits

# (N, V) and why each shape is here.
SHAPES = [
    (1, 1),  # a single row and a single class: lse == logit, loss 0
    (5, 37),  # V < one block and not a power of two: one masked tile
    (3, BLOCK),  # exactly one full tile: no masked tail
    (4, 2 * BLOCK + 37),  # V > block: the loop runs 3 times with a masked tail
]


def make_inputs(n, v, dtype, device, seed=0, ignore_some=True, spread=3.0):
    """Random logits (never zeros) and targets, with a quarter of the rows ignored if asked."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen, dtype=torch.float64) * spread).to(dtype)
    target = torch.randint(0, v, (n,), generator=gen)
    if ignore_some and n > 1:
        target[torch.randperm(n, generator=gen)[: max(1, n // 4)]] = -100
    weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
    return logits.to(device), target.to(device), weight.to(device)


def upstream_like(loss, seed=1):
    """A random upstream gradient (not 1) shaped like the loss."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5
    return g.to(device=loss.device)


def loss_and_grad(fn, logits, target, upstream, **opts):
    x = logits.detach().clone().requires_grad_()
    out = fn(x, target, **opts)
    loss, lse = out if opts.get("return_lse") else (out, None)
    total = (loss * upstream.to(loss.dtype)).sum()
    if lse is not None:  # send a gradient through lse too
        total = total + (lse * 0.3).sum()
    total.backward()
    return loss.detach(), x.grad


def check_against_torch(logits, target, dtype, **opts):
    """fastgd's loss and gradient are within the accuracy rule of float64 truth."""
    ours_loss, ours_grad = loss_and_grad(fastgd.cross_entropy, logits, target,
                                         _upstream_for(logits, target, opts), **opts)
    assert ours_grad.dtype == logits.dtype
    expected_loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert ours_loss.dtype == expected_loss_dtype
    upstream = _upstream_for(logits, target, opts)
    same_loss, same_grad = loss_and_grad(reference_cross_entropy, logits, target, upstream, **opts)
    true_loss, true_grad = loss_and_grad(
        lambda x, t, **o: reference_cross_entropy(x, t, upcast=True, **o),
        logits, target, upstream, **opts)
    assert_accurate(ours_loss, same_loss, true_loss, dtype, "loss")
    assert_accurate(ours_grad, same_grad, true_grad, dtype, "grad")
    return ours_loss, ours_grad, true_loss, true_grad


def _upstream_for(logits, target, opts):
    shape = target.shape if opts.get("reduction") == "none" else ()
    return upstream_like(torch.empty(shape, device=logits.device))
