"""Hypothesis fuzzing against torch: the losses over shapes, strides (transposed, sliced,
expanded, zero-size), dtypes and options; the optimizer over tensor shapes and layouts, dtypes and
options. Bounded examples and a fixed seed (the ``fastgd`` profile of tests/conftest.py), so a
CI run is repeatable; ``HYPOTHESIS_PROFILE=fastgd-long`` searches longer.
"""
from __future__ import annotations

import contextlib

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgd
from fastgd.reference import reference_cross_entropy
from test_optim import _assert_state_same
from tolerances import assert_accurate

# Class counts, each for a reason: 1 (a single class), 7 and 37 (less than a tile, not a multiple
# of 16), 64 (a full small tile), 4097 (one past a 4096-wide tile: a masked second tile).
CLASS_COUNTS = [1, 7, 37, 64, 4097]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "class-strided"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _view(base: torch.Tensor, layout: str, n: int, c: int) -> torch.Tensor:
    """An (n, c) view of ``base`` in ``layout`` (base was made by :func:`_base`)."""
    if layout == "transposed":
        return base.t()
    if layout == "sliced":
        return base[1:n + 1, 2:c + 2]
    if layout == "expanded":
        return base.expand(n, c)
    if layout == "class-strided":
        return base[:, ::2]
    return base


def _base(layout: str, n: int, c: int, dtype, seed: int) -> torch.Tensor:
    shape = {"transposed": (c, n), "sliced": (n + 2, c + 3), "expanded": (1, c),
             "class-strided": (n, 2 * c)}.get(layout, (n, c))
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)


@settings(max_examples=40)
@given(
    n=st.integers(0, 5), c=st.sampled_from(CLASS_COUNTS), layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES), reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.1]), weighted=st.booleans(), ignore=st.booleans(),
    z_loss=st.sampled_from([0.0, 1e-3]), softcap=st.sampled_from([None, 4.0]),
    scale=st.sampled_from([1.0, 0.5]), torch_path=st.booleans(), seed=st.integers(0, 2**16),
)
def test_cross_entropy_matches_torch(n, c, layout, dtype, reduction, smoothing, weighted, ignore,
                                     z_loss, softcap, scale, torch_path, seed, device):
    gen = torch.Generator().manual_seed(seed + 1)
    target = torch.randint(0, c, (n,), generator=gen)
    if ignore and n:
        target[0] = -100
    weight = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5) if weighted else None
    opts = dict(reduction=reduction, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap,
                logit_scale=scale)
    base = _base(layout, n, c, dtype, seed).to(device)
    target = target.to(device)
    upstream = torch.rand(target.shape if reduction == "none" else (), generator=gen,
                          dtype=torch.float64).to(device) + 0.5

    def loss_and_grad(fn, upcast=None):
        x = base.clone().requires_grad_()
        # the same weights for all three: rounded to the compute dtype, as fastgd takes them
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        w = weight.to(device, compute) if weight is not None else None
        kw = dict(opts) if upcast is None else dict(opts, upcast=upcast)
        loss = fn(_view(x, layout, n, c), target, w, **kw)
        (loss * upstream.to(loss.dtype)).sum().backward()
        return loss.detach(), x.grad

    forced = fastgd.force_backend("torch") if torch_path else contextlib.nullcontext()
    with forced:
        ours = loss_and_grad(fastgd.cross_entropy)
    same = loss_and_grad(reference_cross_entropy, upcast=False)
    truth = loss_and_grad(reference_cross_entropy, upcast=True)
    for i, what in enumerate(("loss", "grad")):
        assert_accurate(ours[i], same[i], truth[i], dtype, f"{what} ({layout}, n={n}, c={c})")


# Parameter shapes and layouts, each for a reason: (base shape, the view that is the parameter).
PARAMS = {
    "empty": ((0,), lambda b: b),  # nothing to update; the step still counts
    "single": ((1,), lambda b: b),
    "tail": ((2049,), lambda b: b),  # one past a 2048-element block: a masked tail
    "transposed": ((5, 3), lambda b: b.t()),  # dense, not contiguous
    "sliced": ((4, 6), lambda b: b[:, ::2]),  # not dense: updated through a copy and back
}
# Gradient layouts: the parameter's own, row-major (a copy when the parameter is transposed),
# and expanded from one value (stride 0: what .sum().backward() through a broadcast gives).
GRADS = ["same layout", "contiguous", "expanded"]


@settings(max_examples=25)
@given(
    kinds=st.lists(st.sampled_from(sorted(PARAMS)), min_size=1, max_size=3),
    grad_layout=st.sampled_from(GRADS), dtype=st.sampled_from([torch.float32, torch.float64]),
    amsgrad=st.booleans(), maximize=st.booleans(), decoupled=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]), lr=st.sampled_from([1e-3, 0.05]),
    torch_path=st.booleans(), seed=st.integers(0, 2**16),
)
def test_adam_matches_torch(kinds, grad_layout, dtype, amsgrad, maximize, decoupled,
                            weight_decay, lr, torch_path, seed, device):
    gen = torch.Generator().manual_seed(seed)
    bases = [torch.randn(PARAMS[k][0], generator=gen, dtype=torch.float64).to(dtype)
             for k in kinds]

    def params():
        return [torch.nn.Parameter(PARAMS[k][1](b.clone().to(device)))
                for k, b in zip(kinds, bases)]

    ours_p, ref_p = params(), params()
    opts = dict(lr=lr, amsgrad=amsgrad, maximize=maximize, weight_decay=weight_decay,
                decoupled_weight_decay=decoupled)
    ours = fastgd.Adam(ours_p, **opts)
    ref = torch.optim.Adam(ref_p, foreach=False, **opts)
    for step in range(3):
        for a, b in zip(ours_p, ref_p):
            g = torch.randn(a.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
            a.grad, b.grad = _grad(g, a, grad_layout), _grad(g, b, grad_layout)
        with fastgd.force_backend("torch") if torch_path else contextlib.nullcontext():
            ours.step()
        ref.step()
    _assert_state_same(ours, ref, dtype, f"{kinds} grads {grad_layout}: ")


def _grad(g: torch.Tensor, param: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "same layout":
        return torch.empty_like(param).copy_(g)
    if layout == "expanded":
        return g.reshape(-1)[:1].reshape([1] * g.dim()).expand(g.shape) if g.numel() else g
    return g.contiguous()
