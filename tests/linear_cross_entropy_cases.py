"""Shared pieces of the linear cross-entropy tests: inputs, and the three-way comparison (fastgd vs
materialised logits in the same dtype vs materialised logits in float64) of the loss and the
gradients of hidden, weight and bias under tests/tolerances.py's rule."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import fastgd
from fastgd.reference import reference_cross_entropy
from tolerances import assert_accurate


def make_inputs(n, h, v, dtype, device, seed=0, ignore_some=True, batch=None):
    """hidden (n, h) -- or (batch, n // batch, h) -- weight (v, h), bias (v,), target, class
    weights. Scaled so that the logits spread over a few units (a real softmax, not a flat one)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * (2.0 / h**0.5)
    bias = torch.randn(v, generator=gen, dtype=torch.float64) * 0.5
    target = torch.randint(0, v, (n,), generator=gen)
    if ignore_some and n > 1:
        target[torch.randperm(n, generator=gen)[: max(1, n // 4)]] = -100
    class_weight = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
    if batch is not None:
        hidden, target = hidden.reshape(batch, n // batch, h), target.reshape(batch, n // batch)
    return tuple(x.to(device=device, dtype=dtype if x.is_floating_point() else None)
                 for x in (hidden, weight, bias, target, class_weight))


def materialised(hidden, head, target, *, linear_bias=None, weight=None, chunk_size=None,
                 **opts):
    """The reference: whole logits, then the cross-entropy of fastgd's documented semantics
    (arguments named as ``linear_cross_entropy``'s: ``weight`` holds the per-class weights)."""
    logits = F.linear(hidden, head, linear_bias)
    out = reference_cross_entropy(
        logits.reshape(-1, head.shape[0]), target.reshape(-1),
        weight.to(logits.dtype) if weight is not None else None, **opts)
    loss, lse = out if opts.get("return_lse") else (out, None)
    if opts.get("reduction") == "none":
        loss = loss.reshape(target.shape)
    if lse is not None:
        return loss, lse.reshape(target.shape)
    return loss


def loss_and_grads(fn, hidden, head, target, bias, upstream, **opts):
    """Loss and (d_hidden, d_weight, d_bias) of ``sum(loss * upstream) (+ 0.3 * sum(lse))``
    (``head``: the projection; ``opts`` may hold ``weight``, the per-class weights)."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None
              for x in (hidden, head, bias)]
    out = fn(leaves[0], leaves[1], target, linear_bias=leaves[2], **opts)
    loss, lse = out if opts.get("return_lse") else (out, None)
    total = (loss * upstream.to(loss.dtype)).sum()
    if lse is not None:  # send a gradient through lse too
        total = total + (lse * 0.3).sum()
    total.backward()
    return loss.detach(), [x.grad if x is not None else None for x in leaves]


def upstream_for(target, reduction, seed=1):
    """A random upstream gradient (not 1) shaped like the loss."""
    shape = target.shape if reduction == "none" else ()
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(target.device)


def check_against_materialised(hidden, head, target, bias, dtype, **opts):
    """fastgd.linear_cross_entropy's loss and gradients are within the accuracy rule of the
    float64 truth computed from materialised logits."""
    upstream = upstream_for(target, opts.get("reduction", "mean"))
    ours_loss, ours_grads = loss_and_grads(fastgd.linear_cross_entropy, hidden, head, target,
                                           bias, upstream, **opts)
    same_loss, same_grads = loss_and_grads(materialised, hidden, head, target, bias, upstream,
                                           **opts)
    up = [x.double() if x is not None else None for x in (hidden, head, bias)]
    truth_opts = dict(opts)
    if truth_opts.get("weight") is not None:
        truth_opts["weight"] = truth_opts["weight"].double()
    true_loss, true_grads = loss_and_grads(materialised, up[0], up[1], target, up[2], upstream,
                                           **truth_opts)
    assert ours_loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_accurate(ours_loss, same_loss, true_loss, dtype, "loss")
    for name, ours, same, truth in zip(("d_hidden", "d_weight", "d_bias"), ours_grads,
                                       same_grads, true_grads):
        if truth is None:
            assert ours is None, f"{name}: a gradient for an input that has none"
            continue
        assert ours.dtype == dtype and ours.shape == truth.shape, name
        assert_accurate(ours, same, truth, dtype, name)
    return ours_loss, ours_grads
