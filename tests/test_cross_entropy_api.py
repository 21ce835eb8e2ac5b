"""fastgd.cross_entropy as an API: errors, the module, in-place backward, gradcheck, compile,
out-of-range targets."""
import pickle

import pytest
import torch
import torch.nn.functional as F

import fastgd
from ce_cases import loss_and_grad, make_inputs, upstream_like
from fastgd.reference import reference_cross_entropy
from tolerances import assert_accurate
from fastgd.losses.cross_entropy_ops import (RowOptions, cross_entropy_rows, rows_backward_into,
                                      rows_forward)


# --------------------------------------------------------------------------- bad input
def _good(device):
    logits, target, weight = make_inputs(4, 10, torch.float32, device)
    return logits, target, weight.float()


BAD_CALLS = {
    # name: (call(logits, target, weight) -> None, error type, text the message must name)
    "N mismatch": (lambda x, t, w: fastgd.cross_entropy(x, t[:3]), ValueError, "target shape"),
    "float target": (lambda x, t, w: fastgd.cross_entropy(x, t.float()), TypeError, "probab"),
    "probability target": (lambda x, t, w: fastgd.cross_entropy(x, x.softmax(1)), TypeError,
                           "probab"),
    "bool target": (lambda x, t, w: fastgd.cross_entropy(x, t > 0), TypeError, "target.long"),
    "integer logits": (lambda x, t, w: fastgd.cross_entropy(x.long(), t), TypeError,
                       "input.float"),
    "weight length": (lambda x, t, w: fastgd.cross_entropy(x, t, w[:5]), ValueError, "weight"),
    "negative smoothing": (lambda x, t, w: fastgd.cross_entropy(x, t, label_smoothing=-0.1),
                           ValueError, "label_smoothing"),
    "smoothing > 1": (lambda x, t, w: fastgd.cross_entropy(x, t, label_smoothing=1.5),
                      ValueError, "label_smoothing"),
    "bad reduction": (lambda x, t, w: fastgd.cross_entropy(x, t, reduction="avg"), ValueError,
                      "reduction"),
    "softcap 0": (lambda x, t, w: fastgd.cross_entropy(x, t, softcap=0.0), ValueError, "softcap"),
    "negative z_loss": (lambda x, t, w: fastgd.cross_entropy(x, t, z_loss=-1.0), ValueError,
                        "z_loss"),
    "logit_scale 0": (lambda x, t, w: fastgd.cross_entropy(x, t, logit_scale=0.0), ValueError,
                      "logit_scale"),
    "num_items 0": (lambda x, t, w: fastgd.cross_entropy(x, t, num_items=0), ValueError,
                    "num_items"),
    "num_items inf": (lambda x, t, w: fastgd.cross_entropy(x, t, num_items=float("inf")),
                      ValueError, "num_items"),
    # a host tensor's value is checked without a sync
    "num_items tensor 0": (lambda x, t, w: fastgd.cross_entropy(x, t, num_items=torch.tensor(0)),
                           ValueError, "num_items"),
    "num_items tensor < 0": (lambda x, t, w: fastgd.cross_entropy(
        x, t, num_items=torch.tensor(-3.0)), ValueError, "num_items"),
    "softcap inf": (lambda x, t, w: fastgd.cross_entropy(x, t, softcap=float("inf")), ValueError,
                    "softcap"),
    "z_loss nan": (lambda x, t, w: fastgd.cross_entropy(x, t, z_loss=float("nan")), ValueError,
                   "z_loss"),
    "logit_scale inf": (lambda x, t, w: fastgd.cross_entropy(x, t, logit_scale=float("inf")),
                        ValueError, "logit_scale"),
    "label_smoothing 2-element tensor": (lambda x, t, w: fastgd.cross_entropy(
        x, t, label_smoothing=torch.tensor([0.1, 0.2])), ValueError, "label_smoothing"),
    "num_items none": (lambda x, t, w: fastgd.cross_entropy(x, t, reduction="none", num_items=3),
                       ValueError, "num_items"),
    "num_items float list": (lambda x, t, w: fastgd.cross_entropy(x, t, num_items=[3]),
                             TypeError, "num_items"),
    "zero classes": (lambda x, t, w: fastgd.cross_entropy(x[:, :0], t), ValueError, "0 classes"),
    "target out of range": (lambda x, t, w: fastgd.cross_entropy(x, t.clamp(min=0) + 10),
                            ValueError, "outside [0, 10)"),
    "negative target": (lambda x, t, w: fastgd.cross_entropy(x, torch.full_like(t, -1)),
                        ValueError, "outside"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=str)
def test_bad_input_names_the_argument(case):
    # CPU tensors: the target-range check happens on the host only where it costs no sync.
    call, error, text = BAD_CALLS[case]
    with pytest.raises(error, match=text.replace("[", r"\[").replace(")", r"\)")):
        call(*_good("cpu"))


@pytest.mark.parametrize("path", ["kernels", "torch"])
def test_out_of_range_target_without_host_check_is_nan_not_out_of_bounds(path, device):
    # What CUDA does (no host check there): nothing is read outside the row; the row's loss and
    # gradient are NaN, the other rows are unaffected. Called below the host check.
    logits, target, _ = make_inputs(3, 50, torch.float32, device, ignore_some=False)
    target[1] = 10_000
    options = RowOptions(ignore_index=-100, label_smoothing=0.0, logit_scale=1.0, softcap=0.0)
    with fastgd.force_backend("torch" if path == "torch" else "auto"):
        ce, lse = rows_forward(logits, target, None, options)
        grad = torch.empty_like(logits)
        rows_backward_into(grad, logits, target, None, lse, torch.ones_like(ce), None, options)
    assert ce[1].isnan() and not ce[[0, 2]].isnan().any()
    assert grad[1].isnan().all() and not grad[[0, 2]].isnan().any()
    assert lse.isfinite().all()


# --------------------------------------------------------------------------- the module
def _ignoring(index):
    """Options with ``ignore_index=index``, and targets whose ignored rows carry that index (a
    class the default -100 would count)."""
    return lambda t, w: (dict(ignore_index=index), t.masked_fill(t == -100, index))


# Every option the module stores, away from its default: (target, class weights) -> (constructor
# keywords, target). Each changes the float64 reference's gradient (checked below), so a module
# that dropped one, or passed it on under another name, could not pass.
MODULE_OPTIONS = {
    "weight": lambda t, w: (dict(weight=w), t),
    "ignore_index": _ignoring(7),
    "reduction sum": lambda t, w: (dict(reduction="sum"), t),
    "reduction none": lambda t, w: (dict(reduction="none"), t),
    "label_smoothing": lambda t, w: (dict(label_smoothing=0.1), t),
    "z_loss": lambda t, w: (dict(z_loss=1e-2), t),
    "softcap": lambda t, w: (dict(softcap=2.0), t),
    "logit_scale": lambda t, w: (dict(logit_scale=1.5), t),
    "return_lse": lambda t, w: (dict(return_lse=True), t),
}


def _truth(x, t, **opts):
    return reference_cross_entropy(x, t, upcast=True, **opts)


@pytest.mark.parametrize("option", MODULE_OPTIONS)
def test_module_options_reach_the_computation(option, device):
    logits, target, weight = make_inputs(6, 40, torch.float32, device)
    opts, target = MODULE_OPTIONS[option](target, weight.float())
    module = fastgd.CrossEntropyLoss(**opts)
    upstream = upstream_like(torch.empty(target.shape if opts.get("reduction") == "none" else (),
                                         device=device))
    ours = loss_and_grad(lambda x, t, **_: module(x, t), logits, target, upstream, **opts)
    same = loss_and_grad(reference_cross_entropy, logits, target, upstream, **opts)
    truth = loss_and_grad(_truth, logits, target, upstream, **opts)
    for what, o, s, t in zip(("loss", "grad"), ours, same, truth):
        assert_accurate(o, s, t, torch.float32, f"{option}: {what}")
    _, default_grad = loss_and_grad(_truth, logits, target, upstream)
    assert not torch.allclose(default_grad, truth[1]), f"{option} leaves the answer as it was"


def test_module_num_items_is_per_call(device):
    logits, target, _ = make_inputs(6, 40, torch.float32, device)
    loss_fn = fastgd.CrossEntropyLoss(reduction="sum")
    torch.testing.assert_close(loss_fn(logits, target, num_items=5),
                               F.cross_entropy(logits, target, reduction="sum") / 5)


def test_module_inplace_backward_writes_the_gradient_over_the_logits(device):
    logits, target, _ = make_inputs(5, 30, torch.float32, device)
    leaf = logits.clone().requires_grad_()
    torch.nn.CrossEntropyLoss()(leaf, target).backward()
    x = logits.clone().requires_grad_() * 1.0  # a non-leaf, as logits coming out of an lm_head
    fastgd.CrossEntropyLoss(inplace_backward=True)(x, target).backward()
    torch.testing.assert_close(x.detach(), leaf.grad)


def test_module_is_built_saved_and_moved_like_torchs(device):
    logits, target, weight = make_inputs(6, 40, torch.float32, device)
    weight, target = weight.float(), target.masked_fill(target == -100, 7)
    # torch's positional order (weight, size_average, ignore_index, reduce, reduction, smoothing)
    ours = fastgd.CrossEntropyLoss(weight, None, 7, None, "sum", 0.1, z_loss=1e-3)
    theirs = torch.nn.CrossEntropyLoss(weight, None, 7, None, "sum", 0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    for name in ("ignore_index", "reduction", "label_smoothing"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight"}
    theirs.load_state_dict(ours.state_dict())
    copy = pickle.loads(pickle.dumps(ours))
    assert repr(copy) == repr(ours) and "z_loss=0.001" in repr(ours)
    torch.testing.assert_close(copy(logits, target), ours(logits, target), rtol=0, atol=0)
    assert ours.to(torch.float64).weight.dtype == torch.float64  # a buffer: moves with .to()


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match="softcap"):
        fastgd.CrossEntropyLoss(softcap=-1.0)


# --------------------------------------------------------------------------- in-place backward
def test_inplace_backward_overwrites_logits_with_the_gradient(device):
    logits, target, weight = make_inputs(5, 4096 + 3, torch.bfloat16, device)
    opts = dict(weight=weight.to(torch.bfloat16), label_smoothing=0.1, z_loss=1e-3)
    leaf = logits.clone().requires_grad_()
    fastgd.cross_entropy(leaf, target, **opts).backward()

    base = logits.clone().requires_grad_()
    x = base * 1.0  # a non-leaf, as logits coming out of an lm_head
    version = x._version
    fastgd.cross_entropy(x, target, inplace_backward=True, **opts).backward()
    assert x._version > version, "autograd must see the in-place write"
    torch.testing.assert_close(base.grad, leaf.grad, rtol=0, atol=0)
    torch.testing.assert_close(x.detach(), leaf.grad, rtol=0, atol=0)  # x now holds the grad


def test_inplace_backward_is_caught_when_logits_are_needed_elsewhere(device):
    logits, target, _ = make_inputs(3, 30, torch.float32, device)
    base = logits.clone().requires_grad_()
    x = base * 1.0
    other = x.sin().sum()  # sin saves x for its own backward
    loss = fastgd.cross_entropy(x, target, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_inplace_backward_on_torch_path(device):
    logits, target, _ = make_inputs(4, 30, torch.float32, device)
    with fastgd.force_backend("torch"):
        x = logits.clone().requires_grad_()
        fastgd.cross_entropy(x, target).backward()
        y = (logits.clone().requires_grad_() * 1.0)
        y.retain_grad()
        fastgd.cross_entropy(y, target, inplace_backward=True).backward()
    torch.testing.assert_close(y.detach(), x.grad, rtol=0, atol=0)


# --------------------------------------------------------------------------- autograd & compile
@pytest.mark.parametrize("opts", [
    dict(),
    dict(weight=True, label_smoothing=0.2, z_loss=0.1, softcap=2.0, logit_scale=1.5),
    dict(reduction="none", return_lse=True, softcap=3.0),
], ids=["plain", "all-options", "none+lse"])
def test_gradcheck_float64(opts, device):
    logits, target, weight = make_inputs(3, 7, torch.float64, device)
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = weight

    def fn(x):
        out = fastgd.cross_entropy(x, target, **opts)
        return out if isinstance(out, tuple) else (out,)

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),))


@pytest.mark.parametrize("inplace_backward", [False, True])
def test_torch_compile_fullgraph(inplace_backward, device):
    # logits from a matmul, as in an LM head; the weight's gradient flows through our backward.
    logits, target, weight = make_inputs(6, 50, torch.float32, device)
    hidden = torch.randn(6, 8, generator=torch.Generator().manual_seed(3)).to(device)
    head = (torch.randn(50, 8, generator=torch.Generator().manual_seed(4)) * 0.3).to(device)

    def step(h, w, t, class_weight):
        return fastgd.cross_entropy(h @ w.t(), t, class_weight, label_smoothing=0.1, z_loss=1e-3,
                                    softcap=5.0, inplace_backward=inplace_backward)

    compiled = torch.compile(step, fullgraph=True)
    w1 = head.clone().requires_grad_()
    loss = compiled(hidden, w1, target, weight.float())
    loss.backward()
    w2 = head.clone().requires_grad_()
    expected = step(hidden, w2, target, weight.float())
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-5, atol=1e-7)


def test_library_ops_pass_opcheck(device):
    logits, target, weight = make_inputs(4, 20, torch.float32, device)
    x = logits.clone().requires_grad_()
    torch.library.opcheck(cross_entropy_rows, (x, target, weight.float(), -100, 0.1, 1.0, 3.0,
                                               False))


def test_drop_in_training_loop(device):
    # Swapping F.cross_entropy for fastgd.cross_entropy in a small loop trains the same model.
    def train(loss_fn):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                    torch.nn.Linear(32, 50)).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(24, 16, generator=gen).to(device)  # one batch, fitted for a few steps
        y = torch.randint(0, 50, (24,), generator=gen).to(device)
        y[:3] = -100
        losses = []
        for _ in range(5):
            loss = loss_fn(model(x), y, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, [p.detach() for p in model.parameters()]

    ours_losses, ours_params = train(fastgd.cross_entropy)
    torch_losses, torch_params = train(F.cross_entropy)
    assert ours_losses[-1] < ours_losses[0]
    torch.testing.assert_close(ours_losses, torch_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
