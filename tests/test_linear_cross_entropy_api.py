"""fastgd.linear_cross_entropy's API: bad input, the module form, the default chunk rule, the
library op under opcheck and torch.compile."""
import pytest
import torch

import fastgd
from fastgd.launch_config import LCE_CHUNK_BUDGET_BYTES, linear_cross_entropy_chunk
from fastgd.losses.linear_cross_entropy_ops import linear_cross_entropy_rows
from linear_cross_entropy_cases import make_inputs
from tolerances import assert_same


@pytest.fixture
def inputs(device):
    return make_inputs(10, 16, 300, torch.float32, device)


@pytest.mark.parametrize("change,error,match", [
    (dict(weight=lambda w: w[:, :8]), ValueError, "weight must have shape"),
    (dict(weight=lambda w: w.double()), TypeError, "weight dtype"),
    (dict(bias=lambda b: b[:7]), ValueError, "bias must have shape"),
    (dict(target=lambda t: t[:5]), ValueError, "target shape"),
    (dict(target=lambda t: t.float()), TypeError, "target must hold"),
    (dict(hidden=lambda h: h.long()), TypeError, "hidden dtype"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.5), ValueError, "chunk_size"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(num_items=10, reduction="none"), ValueError, "num_items"),
    (dict(class_weight=lambda _: torch.ones(7)), ValueError, r"shape \(C,\)"),
])
def test_bad_input_names_the_argument(inputs, change, error, match):
    hidden, weight, bias, target, _ = inputs
    args = dict(hidden=hidden, weight=weight, target=target, bias=bias)
    for key, value in change.items():
        args[key] = value(args.get(key)) if callable(value) else value
    with pytest.raises(error, match=match):
        fastgd.linear_cross_entropy(**args)


def test_target_out_of_range_raises_on_cpu():
    hidden, weight, bias, target, _ = make_inputs(10, 16, 300, torch.float32, "cpu")
    target[3] = 300
    with pytest.raises(ValueError, match="outside"):
        fastgd.linear_cross_entropy(hidden, weight, target, bias)


def test_module_matches_function(inputs):
    hidden, weight, bias, target, class_weight = inputs
    loss_fn = fastgd.LinearCrossEntropyLoss(class_weight, label_smoothing=0.1, z_loss=1e-3,
                                            reduction="sum", chunk_size=3)
    expected = fastgd.linear_cross_entropy(hidden, weight, target, bias, class_weight=class_weight,
                                           label_smoothing=0.1, z_loss=1e-3, reduction="sum")
    assert_same(loss_fn(hidden, weight, target, bias), expected, torch.float32, "module loss")
    assert "chunk_size=3" in repr(loss_fn)


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
        return fastgd.linear_cross_entropy(h, w, target, b, z_loss=1e-3, chunk_size=4)

    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True)):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [x.grad for x in leaves])
    for name, compiled, eager in zip(("loss", "d_hidden", "d_weight", "d_bias"), *results[::-1]):
        assert_same(compiled, eager, torch.float32, name)
