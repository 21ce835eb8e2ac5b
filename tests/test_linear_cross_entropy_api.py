"""fastgd.linear_cross_entropy's API: bad input, the module form, the default chunk rule, the
library op under opcheck and torch.compile."""
import importlib
import pickle

import pytest
import torch

import fastgd
from fastgd.launch_config import LCE_CHUNK_BUDGET_BYTES, linear_cross_entropy_chunk
from fastgd.losses.linear_cross_entropy_ops import linear_cross_entropy_rows
from linear_cross_entropy_cases import loss_and_grads, make_inputs, materialised, upstream_for
from tolerances import assert_accurate, assert_same

# the module (not the function fastgd.losses re-exports under the same name)
lce_module = importlib.import_module("fastgd.losses.linear_cross_entropy")


@pytest.fixture
def inputs(device):
    return make_inputs(10, 16, 300, torch.float32, device)


@pytest.mark.parametrize("change,error,match", [
    (dict(linear_weight=lambda w: w[:, :8]), ValueError, "linear_weight must have shape"),
    (dict(linear_weight=lambda w: w.long()), TypeError, "linear_weight dtype"),
    (dict(linear_bias=lambda b: b[:7]), ValueError, "linear_bias must have shape"),
    (dict(target=lambda t: t[:5]), ValueError, "target shape"),
    (dict(target=lambda t: t > 0), TypeError, "target must hold"),
    (dict(input=lambda h: h.long()), TypeError, "input dtype"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.5), ValueError, "chunk_size"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(num_items=10, reduction="none"), ValueError, "num_items"),
    (dict(weight=lambda _: torch.ones(7)), ValueError, r"shape \(C,\)"),
    # the projection passed where torch's signature puts the per-class weights
    (dict(weight=lambda _: torch.ones(300, 16)), ValueError, "linear_weight, the 2nd argument"),
    (dict(options=3), TypeError, "LinearCrossEntropyOptions"),
])
def test_bad_input_names_the_argument(inputs, change, error, match):
    hidden, weight, bias, target, _ = inputs
    args = dict(input=hidden, linear_weight=weight, target=target, linear_bias=bias)
    for key, value in change.items():
        args[key] = value(args.get(key)) if callable(value) else value
    with pytest.raises(error, match=match):
        fastgd.linear_cross_entropy(**args)


def test_target_out_of_range_raises_on_cpu():
    hidden, weight, bias, target, _ = make_inputs(10, 16, 300, torch.float32, "cpu")
    target[3] = 300
    with pytest.raises(ValueError, match="outside"):
        fastgd.linear_cross_entropy(hidden, weight, target, linear_bias=bias)


# Every option the module stores, away from its default: (target, class weights) -> (constructor
# keywords, target). Each changes the float64 reference's gradient (checked below), so a module
# that dropped one, or passed it on under another name, could not pass. chunk_size changes no
# number: its own test follows.
MODULE_OPTIONS = {
    "weight": lambda t, w: (dict(weight=w), t),
    "ignore_index": lambda t, w: (dict(ignore_index=7), t.masked_fill(t == -100, 7)),
    "reduction sum": lambda t, w: (dict(reduction="sum"), t),
    "reduction none": lambda t, w: (dict(reduction="none"), t),
    "label_smoothing": lambda t, w: (dict(label_smoothing=0.1), t),
    "z_loss": lambda t, w: (dict(z_loss=1e-2), t),
    "softcap": lambda t, w: (dict(softcap=2.0), t),
    "logit_scale": lambda t, w: (dict(logit_scale=1.5), t),
    "return_lse": lambda t, w: (dict(return_lse=True), t),
}


@pytest.mark.parametrize("option", MODULE_OPTIONS)
def test_module_options_reach_the_computation(inputs, option):
    hidden, weight, bias, target, class_weight = inputs
    opts, target = MODULE_OPTIONS[option](target, class_weight)
    module = fastgd.LinearCrossEntropyLoss(16, 300, bias=True, **opts)
    with torch.no_grad():  # the module's own head, set to the case's
        module.linear.weight.copy_(weight), module.linear.bias.copy_(bias)
    upstream = upstream_for(target, opts.get("reduction", "mean"))

    ours = _module_loss_and_grads(module, hidden, target, upstream, opts)
    same = loss_and_grads(materialised, hidden, weight, target, bias, upstream, **opts)
    up = [x.double() for x in (hidden, weight, bias)]
    truth_opts = {k: v.double() if torch.is_tensor(v) else v for k, v in opts.items()}
    truth = loss_and_grads(materialised, up[0], up[1], target, up[2], upstream, **truth_opts)
    assert_accurate(ours[0], same[0], truth[0], torch.float32, f"{option}: loss")
    for name, o, s, t in zip(("d_hidden", "d_weight", "d_bias"), ours[1], same[1], truth[1]):
        assert_accurate(o, s, t, torch.float32, f"{option}: {name}")
    _, default_grads = loss_and_grads(materialised, up[0], up[1], target, up[2], upstream)
    assert not torch.allclose(default_grads[0], truth[1][0]), f"{option} changes nothing"


def _module_loss_and_grads(module, hidden, target, upstream, opts):
    """As ``loss_and_grads``, through a module that owns its head: (loss, [d_hidden, d_weight,
    d_bias])."""
    leaf = hidden.detach().clone().requires_grad_()
    out = module(leaf, target)
    loss, lse = out if opts.get("return_lse") else (out, None)
    total = (loss * upstream.to(loss.dtype)).sum()
    if lse is not None:
        total = total + (lse * 0.3).sum()
    total.backward()
    return loss.detach(), [leaf.grad, module.linear.weight.grad, module.linear.bias.grad]


def test_module_num_items_is_per_call(inputs):
    hidden, weight, bias, target, _ = inputs
    module = fastgd.LinearCrossEntropyLoss(16, 300, bias=True, reduction="sum")
    with torch.no_grad():
        module.linear.weight.copy_(weight), module.linear.bias.copy_(bias)
    loss = module(hidden, target, num_items=4)
    assert_same(loss, materialised(hidden, weight, target, linear_bias=bias, reduction="sum") / 4,
                torch.float32, "loss / num_items")


def test_module_chunk_size_reaches_the_op(inputs, monkeypatch):
    hidden, weight, bias, target, _ = inputs
    seen = []

    def spy(*args):
        seen.append(args[-1])  # the op's last argument: rows per chunk, 0 for the default rule
        return linear_cross_entropy_rows(*args)

    monkeypatch.setattr(lce_module, "linear_cross_entropy_rows", spy)
    fastgd.LinearCrossEntropyLoss(16, 300, chunk_size=3)(hidden, target)
    fastgd.LinearCrossEntropyLoss(16, 300)(hidden, target)
    assert seen == [3, 0]


def test_module_is_saved_and_moved_with_its_options(inputs):
    hidden, weight, bias, target, class_weight = inputs
    target = target.masked_fill(target == -100, 7)
    options = dict(ignore_index=7, reduction="sum", label_smoothing=0.1, z_loss=1e-3,
                   softcap=5.0, logit_scale=1.5, chunk_size=3)
    ours = fastgd.LinearCrossEntropyLoss(16, 300, bias=True, weight=class_weight, **options)
    assert ours.state_dict().keys() == {"weight", "linear.weight", "linear.bias"}  # torch's keys
    fresh = fastgd.LinearCrossEntropyLoss(16, 300, bias=True, weight=torch.ones_like(class_weight),
                                          **options)
    fresh.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fresh(hidden, target), ours(hidden, target), rtol=0, atol=0)
    copy = pickle.loads(pickle.dumps(ours))
    assert repr(copy) == repr(ours) and "chunk_size=3" in repr(ours)
    torch.testing.assert_close(copy(hidden, target), ours(hidden, target), rtol=0, atol=0)
    moved = ours.to(torch.float64)  # the class weights are a buffer, the head parameters
    assert moved.weight.dtype == moved.linear.weight.dtype == torch.float64


@pytest.mark.parametrize("n_rows,n_classes,bytes_per_logit", [
    (16384, 128256, 2),  # Llama-3 vocabulary, bf16 logits on the GPU
    (100, 128256, 2),  # fewer tokens than the budget allows: one chunk of all of them
    (16384, 32000, 28),  # the PyTorch row path's fp32 copies
    (5, 1 << 30, 4),  # a row alone is over budget: chunks of one row, never zero
])
def test_default_chunk_fits_the_budget(n_rows, n_classes, bytes_per_logit):
    rows = linear_cross_entropy_chunk(n_rows, n_classes, bytes_per_logit)
    assert 1 <= rows <= n_rows
    assert rows & (rows - 1) == 0 or rows == n_rows  # a power of two unless clamped to N
    if rows > 1:
        assert rows * n_classes * bytes_per_logit <= LCE_CHUNK_BUDGET_BYTES
    if rows < n_rows:  # the largest that fits: twice as many would not
        assert 2 * rows * n_classes * bytes_per_logit > LCE_CHUNK_BUDGET_BYTES


def test_opcheck(device):
    hidden, weight, bias, target, class_weight = make_inputs(6, 8, 40, torch.float32, device)
    args = (hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), target,
            class_weight.float(), -100, 0.1, 1.3, 4.0, 4)
    torch.library.opcheck(linear_cross_entropy_rows, args)


def test_torch_compile_fullgraph(device):
    hidden, weight, bias, target, _ = make_inputs(10, 16, 300, torch.float32, device)

    def loss_fn(h, w, b):
        return fastgd.linear_cross_entropy(h, w, target, linear_bias=b, z_loss=1e-3,
                                           chunk_size=4)

    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True)):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [x.grad for x in leaves])
    for name, compiled, eager in zip(("loss", "d_hidden", "d_weight", "d_bias"), *results[::-1]):
        assert_same(compiled, eager, torch.float32, name)
