"""Code written for torch's losses runs unchanged on fastgd's: torch 2.13's
``F.linear_cross_entropy`` / ``nn.LinearCrossEntropyLoss`` signature and meaning (its own
docstring examples included), ``F.cross_entropy``'s full positional order with the legacy
``size_average`` / ``reduce``; the old fastgd names still work for one release, with a
``DeprecationWarning``; and ``linear_cross_entropy``'s dtype rule under ``torch.autocast`` and
for mixed bfloat16 / float32 operands.

Where torch (2.11) has no ``F.linear_cross_entropy``, the reference is ``F.cross_entropy`` of
``F.linear``, which torch's docstring defines it to equal.
"""
from __future__ import annotations

import importlib
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastgd
from tolerances import SAME_PRECISION, assert_accurate

RTOL, ATOL = SAME_PRECISION[torch.float32]
TORCH_HAS_LINEAR_CE = hasattr(F, "linear_cross_entropy")
# 7 rows and 11 classes: neither a multiple of any chunk or tile; chunk_size=3 splits 3/3/1
N, H, V = 7, 5, 11


def _torch_linear_ce(input, linear_weight, target, *, linear_bias=None, weight=None,
                     reduction="mean", ignore_index=None, label_smoothing=0.0, options=None):
    """torch's function where it exists, else its documented equivalent."""
    if TORCH_HAS_LINEAR_CE:
        return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                      weight=weight, reduction=reduction,
                                      ignore_index=ignore_index, label_smoothing=label_smoothing,
                                      options=options)
    logits = torch.tensordot(input, linear_weight, dims=([input.dim() - 1],
                                                         [linear_weight.dim() - 1]))
    if linear_bias is not None:
        logits = logits + linear_bias
    return F.cross_entropy(logits, target, weight, reduction=reduction,
                           ignore_index=-100 if ignore_index is None else ignore_index,
                           label_smoothing=label_smoothing)


def _inputs(seed=0, target_shape=(N,), input_shape=(N, H), head_shape=(V, H)):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*input_shape, generator=gen)
    head = torch.randn(*head_shape, generator=gen)
    bias = torch.randn(head_shape[:-1], generator=gen)
    target = torch.randint(0, V, target_shape, generator=gen)
    if target.dim():
        target.view(-1)[1] = -100  # one ignored row
    class_weights = torch.rand(V, generator=gen) + 0.5
    return hidden, head, bias, target, class_weights


def _loss_and_grads(fn, hidden, head, bias, target, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (hidden, head, bias)]
    loss = fn(leaves[0], leaves[1], target, linear_bias=leaves[2], **kwargs)
    gen = torch.Generator().manual_seed(9)  # a random upstream gradient, not ones
    (loss * (torch.rand(loss.shape, generator=gen) + 0.5)).sum().backward()
    return [loss.detach().float()] + [t.grad for t in leaves]


def _double(kwargs: dict) -> dict:
    return {k: v.double() if torch.is_tensor(v) else v for k, v in kwargs.items()}


def _check_against_torch(hidden, head, bias, target, what, **kwargs):
    """The accuracy rule: against torch's function in float64, ours within 2x torch's own
    float32 error."""
    ours = _loss_and_grads(fastgd.linear_cross_entropy, hidden, head, bias, target, **kwargs)
    theirs = _loss_and_grads(_torch_linear_ce, hidden, head, bias, target, **kwargs)
    truth = _loss_and_grads(_torch_linear_ce, hidden.double(), head.double(), bias.double(),
                            target.double() if target.is_floating_point() else target,
                            **_double(kwargs))
    for name, a, b, t in zip(("loss", "d_input", "d_linear_weight", "d_linear_bias"), ours,
                             theirs, truth):
        assert_accurate(a, b, t, torch.float32, f"{what}: {name}")


def _options(**fields):
    if not TORCH_HAS_LINEAR_CE:
        pytest.skip("this torch has no LinearCrossEntropyOptions")
    return torch.nn.LinearCrossEntropyOptions(**fields)


# Each case is a keyword set of torch's signature.
TORCH_CASES = {
    "defaults": {},
    "class weights": dict(weight="class_weights"),
    "weights + smoothing, sum": dict(weight="class_weights", label_smoothing=0.2, reduction="sum"),
    "none": dict(reduction="none"),
    "ignore_index 3": dict(ignore_index=3),
    "ignore_index -100 explicitly": dict(ignore_index=-100),
    "options (chunked)": dict(options="chunk 3"),
}


@pytest.mark.parametrize("case", TORCH_CASES)
def test_linear_cross_entropy_takes_torchs_signature(case):
    hidden, head, bias, target, class_weights = _inputs()
    kwargs = dict(TORCH_CASES[case])
    if kwargs.get("weight") == "class_weights":
        kwargs["weight"] = class_weights
    if kwargs.get("options") == "chunk 3":
        kwargs["options"] = _options(batch_chunk_size=3)
    if "ignore_index" in kwargs:  # the ignored row carries the custom index
        target = target.masked_fill(target == -100, kwargs["ignore_index"])
    _check_against_torch(hidden, head, bias, target, case, **kwargs)


def test_options_batch_chunk_size_is_the_chunk(monkeypatch):
    module = importlib.import_module("fastgd.losses.linear_cross_entropy")

    seen = []
    real = module.linear_cross_entropy_rows
    monkeypatch.setattr(module, "linear_cross_entropy_rows",
                        lambda *args: seen.append(args[-1]) or real(*args))
    hidden, head, _, target, _ = _inputs()
    fastgd.linear_cross_entropy(hidden, head, target, options=_options(batch_chunk_size=3))
    fastgd.linear_cross_entropy(hidden, head, target, options=_options(), chunk_size=2)
    assert seen == [3, 2]  # an explicit chunk_size wins


@pytest.mark.parametrize("shapes", [
    # one unbatched sample: (H,) input, 0-dim target
    dict(input_shape=(H,), target_shape=()),
    # a K-dimensional head (V, 4, 3, H): logits (N, V, 4, 3), computed materialised
    dict(head_shape=(V, 4, 3, H), target_shape=(N, 4, 3)),
], ids=["unbatched", "K-dimensional"])
def test_shapes_of_torchs_signature(shapes):
    hidden, head, bias, target, class_weights = _inputs(seed=3, **shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the K-dim fallback says it materialises
        _check_against_torch(hidden, head, bias, target, "shapes", weight=class_weights)


def test_class_probability_targets_fall_back_with_a_warning():
    hidden, head, bias, _, class_weights = _inputs(seed=4)
    probabilities = torch.rand(N, V, generator=torch.Generator().manual_seed(5)).softmax(1)
    with pytest.warns(UserWarning, match="materialise the logits"):
        _check_against_torch(hidden, head, bias, probabilities, "probabilities",
                             weight=class_weights, label_smoothing=0.1)
    with pytest.raises(ValueError, match="z_loss"):  # fastgd's extras need class indices
        fastgd.linear_cross_entropy(hidden, head, probabilities, z_loss=1e-3)


@pytest.mark.skipif(not TORCH_HAS_LINEAR_CE, reason="this torch has no F.linear_cross_entropy")
def test_signature_lists_torchs_parameters_in_torchs_order():
    ours = inspect.signature(fastgd.linear_cross_entropy).parameters
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    assert list(ours)[:3] == list(theirs)[:3] == ["input", "linear_weight", "target"]
    for name, param in theirs.items():
        assert name in ours, name
        assert ours[name].default == param.default, name
        if param.kind == param.KEYWORD_ONLY:
            assert ours[name].kind == param.KEYWORD_ONLY, name
    ours_module = inspect.signature(fastgd.LinearCrossEntropyLoss).parameters
    theirs_module = inspect.signature(torch.nn.LinearCrossEntropyLoss).parameters
    # (in_features and num_classes default to None here: without them the module is the
    # deprecated headless form, for one release)
    assert list(ours_module)[:2] == list(theirs_module)[:2] == ["in_features", "num_classes"]
    for name, param in theirs_module.items():
        if param.kind == param.KEYWORD_ONLY:
            assert ours_module[name].kind == param.KEYWORD_ONLY, name
            assert ours_module[name].default == param.default, name


def _docstring_examples(obj) -> str:
    lines = [line.strip()[4:] for line in (obj.__doc__ or "").splitlines()
             if line.strip().startswith(">>> ")]
    return "\n".join(lines)


@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyLoss"),
                    reason="this torch has no nn.LinearCrossEntropyLoss")
def test_torchs_own_docstring_examples_run_through_ours():
    """torch's examples, run once with torch.nn and once with fastgd's module in its place:
    the same losses and input gradients (the heads start equal: same seed, same nn.Linear)."""
    code = _docstring_examples(torch.nn.LinearCrossEntropyLoss)
    assert "LinearCrossEntropyLoss" in code and "softmax" in code  # both of its examples

    def run(nn_namespace) -> list:
        outputs = []
        namespace = {"torch": torch, "nn": nn_namespace, "F": F}
        # record each output and the input's gradient after each backward
        instrumented = code.replace("output.backward()",
                                    "output.backward(); _seen.append((output.detach(), "
                                    "input.grad.clone()))")
        namespace["_seen"] = outputs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # our fallback says it materialises
            exec(compile(instrumented, "<torch docstring>", "exec"), namespace)
        return outputs

    class FastgdNN:
        LinearCrossEntropyLoss = fastgd.LinearCrossEntropyLoss

    ours, theirs = run(FastgdNN), run(torch.nn)
    assert len(ours) == len(theirs) == 2
    for (loss, grad), (loss_t, grad_t) in zip(ours, theirs):
        torch.testing.assert_close(loss.float(), loss_t.float(), rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(grad, grad_t, rtol=RTOL, atol=ATOL)


def test_module_state_dict_moves_between_torch_and_fastgd():
    if not hasattr(torch.nn, "LinearCrossEntropyLoss"):
        pytest.skip("this torch has no nn.LinearCrossEntropyLoss")
    hidden, _, _, target, class_weights = _inputs(seed=6)
    theirs = torch.nn.LinearCrossEntropyLoss(H, V, bias=True, weight=class_weights,
                                             label_smoothing=0.1)
    ours = fastgd.LinearCrossEntropyLoss(H, V, bias=True, weight=torch.ones(V),
                                         label_smoothing=0.1)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(hidden, target), theirs(hidden, target).float(),
                               rtol=RTOL, atol=ATOL)
    theirs.load_state_dict(ours.state_dict())


# ----------------------------------------------------------------- cross_entropy's order
def test_cross_entropy_takes_torchs_full_positional_order():
    logits = torch.randn(N, V, generator=torch.Generator().manual_seed(7))
    _, _, _, target, class_weights = _inputs()
    target = target.masked_fill(target == -100, 3)  # ignored in both cases below
    cases = [
        (None, None, -100),  # the example: x, t, None, None, -100
        (class_weights, None, 3, None, "sum", 0.1),  # every slot, in torch's order
    ]
    for args in cases:
        torch.testing.assert_close(fastgd.cross_entropy(logits, target, *args),
                                   F.cross_entropy(logits, target, *args), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("size_average,reduce", [(False, None), (None, False), (True, True)])
def test_legacy_size_average_and_reduce_mean_what_they_mean_in_torch(size_average, reduce):
    logits = torch.randn(N, V, generator=torch.Generator().manual_seed(8))
    _, _, _, target, _ = _inputs()
    with pytest.warns(UserWarning, match="size_average and reduce"):
        ours = fastgd.cross_entropy(logits, target, None, size_average, -100, reduce)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = F.cross_entropy(logits, target, None, size_average, -100, reduce)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------- the old names, deprecated
def test_old_fastgd_names_warn_and_mean_what_they_meant():
    hidden, head, bias, target, class_weights = _inputs()
    expected = fastgd.linear_cross_entropy(hidden, head, target, linear_bias=bias,
                                           weight=class_weights)
    with pytest.warns(DeprecationWarning, match="linear_bias"):
        positional = fastgd.linear_cross_entropy(hidden, head, target, bias, weight=class_weights)
    with pytest.warns(DeprecationWarning, match="class_weight"):
        old_keywords = fastgd.linear_cross_entropy(hidden, head, target, linear_bias=bias,
                                                   class_weight=class_weights)
    for value in (positional, old_keywords):
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    logits = hidden @ head.T
    target = target.masked_fill(target == -100, 3)  # the old order's 4th: ignore_index=3
    with pytest.warns(DeprecationWarning, match="positional order"):
        old_order = fastgd.cross_entropy(logits, target, class_weights, 3, "sum", 0.1)
    torch.testing.assert_close(old_order, fastgd.cross_entropy(
        logits, target, class_weights, ignore_index=3, reduction="sum", label_smoothing=0.1))
    with pytest.warns(DeprecationWarning, match="headless"):
        headless = fastgd.LinearCrossEntropyLoss(class_weights, reduction="sum")
    torch.testing.assert_close(headless(hidden, head, target, bias), fastgd.linear_cross_entropy(
        hidden, head, target, linear_bias=bias, weight=class_weights, reduction="sum"))


def test_an_old_module_state_dict_loads():
    """fastgd 0.1's LinearCrossEntropyLoss saved its class weights as "class_weight"."""
    weights = torch.rand(V, generator=torch.Generator().manual_seed(12)) + 0.5
    with pytest.warns(DeprecationWarning, match="headless"):
        module = fastgd.LinearCrossEntropyLoss(torch.ones(V))
    module.load_state_dict({"class_weight": weights})
    assert torch.equal(module.weight, weights)


def test_an_argument_given_twice_is_refused():
    hidden, head, bias, target, class_weights = _inputs()
    with pytest.raises(TypeError, match="linear_bias"):
        fastgd.linear_cross_entropy(hidden, head, target, bias, linear_bias=bias)
    with pytest.raises(TypeError, match="weight= only"):
        fastgd.linear_cross_entropy(hidden, head, target, weight=class_weights,
                                    class_weight=class_weights)
    with pytest.raises(TypeError, match="3 positional"):
        fastgd.linear_cross_entropy(hidden, head, target, bias, class_weights)


# ----------------------------------------------------------------- dtypes
def test_under_autocast_the_head_runs_as_f_linear_would():
    hidden, head, _, target, _ = _inputs(seed=10)
    leaves = [t.clone().requires_grad_() for t in (hidden, head)]
    refs = [t.clone().requires_grad_() for t in (hidden, head)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = fastgd.linear_cross_entropy(*leaves, target)
        logits = F.linear(*refs)
        assert logits.dtype == torch.bfloat16  # autocast is on for this op
        theirs = F.cross_entropy(logits.float(), target)
    assert ours.dtype == torch.float32
    # the same bfloat16 matmul: the losses agree to float32 rounding, not just bfloat16's
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    ours.backward(), theirs.backward()
    for leaf, ref in zip(leaves, refs):
        assert leaf.grad.dtype == torch.float32  # each gradient in its input's dtype
        torch.testing.assert_close(leaf.grad, ref.grad, rtol=1e-2, atol=1e-3)  # bf16 products
    # and it differs from the float32 computation, so the cast did happen
    assert not torch.equal(ours.detach(), fastgd.linear_cross_entropy(hidden, head, target))


def test_mixed_bfloat16_input_and_float32_head_outside_autocast():
    hidden, head, bias, target, _ = _inputs(seed=11)
    h16 = hidden.bfloat16().requires_grad_()
    w32, b32 = head.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = fastgd.linear_cross_entropy(h16, w32, target, linear_bias=b32)
    loss.backward()
    expected = fastgd.linear_cross_entropy(hidden.bfloat16(), head.bfloat16(), target,
                                           linear_bias=bias.bfloat16())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)  # the rule: input's dtype
    assert (h16.grad.dtype, w32.grad.dtype, b32.grad.dtype) == (
        torch.bfloat16, torch.float32, torch.float32)
