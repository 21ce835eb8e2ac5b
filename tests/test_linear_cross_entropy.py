"""fastgd.linear_cross_entropy against the materialised logits: loss and the gradients of hidden,
weight and bias, every option, awkward shapes and chunk sizes, every dtype.

Run interpreted on CPU (CI) and compiled on CUDA, through the same tests. Sizes are small: the
interpreter costs ~1 ms per launch, and every chunk is two launches (forward and backward)."""
import pytest
import torch

import fastgd
from linear_cross_entropy_cases import (check_against_materialised, loss_and_grads, make_inputs,
                                       materialised, upstream_for)
from tolerances import assert_same

BLOCK = 4096  # fastgd.launch_config.CE_MAX_BLOCK for 16/32-bit logits

# (N, H, V, chunk_size) and why each case is here.
CASES = [
    (1, 8, 1, None),  # one token, one class: lse == logit, loss 0, gradients 0
    (37, 16, 300, 8),  # N not a multiple of the chunk (last chunk has 5 rows); V < one block
    (37, 16, 300, 1),  # chunk of one row: 37 chunks, each its own matmuls
    (37, 16, 300, 1000),  # chunk larger than N: one chunk, clamped to N rows
    (37, 16, 300, None),  # the default chunk from the memory budget (all of N here)
    (5, 8, 2 * BLOCK + 37, 2),  # V > block: the row kernels loop 3 times with a masked tail
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}xH{}xV{}-chunk{}".format(*c))
def test_fp32_matches_materialised(case, reduction, device):
    n, h, v, chunk = case
    hidden, weight, bias, target, _ = make_inputs(n, h, v, torch.float32, device)
    check_against_materialised(hidden, weight, target, bias, torch.float32, reduction=reduction,
                               chunk_size=chunk)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_dtypes_match_materialised(dtype, reduction, device):
    # 16-bit: the logits chunk and its gradient are 16-bit (as torch's would be); d_weight and
    # d_bias are summed over chunks in fp32 and rounded once. float64: computed in float64.
    hidden, weight, bias, target, _ = make_inputs(37, 16, 300, dtype, device, seed=1)
    check_against_materialised(hidden, weight, target, bias, dtype, reduction=reduction,
                               chunk_size=8)


# Each option alone, then all together (class weights change every term).
OPTIONS = {
    "class_weight": dict(class_weight=True),
    "smoothing": dict(label_smoothing=0.1),
    "class_weight+smoothing": dict(class_weight=True, label_smoothing=0.2),
    "z_loss": dict(z_loss=1e-2),
    "softcap": dict(softcap=2.0),  # below the logits' spread, so the cap really bends them
    "logit_scale": dict(logit_scale=0.37),
    "ignore_index=3": dict(ignore_index=3),
    "return_lse": dict(return_lse=True),
    "num_items": dict(num_items=50),
    "all": dict(class_weight=True, label_smoothing=0.15, z_loss=1e-2, softcap=3.0,
                logit_scale=1.7, return_lse=True),
}


# num_items divides a summed loss: it is rejected with reduction="none" (see the API tests).
OPTION_REDUCTIONS = [(o, r) for o in OPTIONS for r in ("mean", "none")
                     if not (o == "num_items" and r == "none")]


@pytest.mark.parametrize("option,reduction", OPTION_REDUCTIONS,
                         ids=[f"{o}-{r}" for o, r in OPTION_REDUCTIONS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_options_match_materialised(dtype, option, reduction, device):
    hidden, weight, bias, target, class_weight = make_inputs(21, 16, 300, dtype, device, seed=2)
    opts = dict(OPTIONS[option], reduction=reduction, chunk_size=8)
    if opts.pop("class_weight", False):
        opts["weight"] = class_weight.to(dtype)
    if option == "ignore_index=3":
        target[target == -100] = 3  # the ignored rows use the custom index
    check_against_materialised(hidden, weight, target, bias, dtype, **opts)


def test_lm_shaped_hidden_without_bias(device):
    # (B, T, H) hidden and (B, T) target, flattened as an LM head's; no bias.
    hidden, weight, _, target, _ = make_inputs(12, 16, 300, torch.float32, device, batch=3)
    loss, grads = check_against_materialised(hidden, weight, target, None, torch.float32,
                                             reduction="none", chunk_size=5)
    assert loss.shape == (3, 4) and grads[0].shape == hidden.shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_tokens_ignored_gives_zero_not_nan(reduction, device):
    hidden, weight, bias, target, _ = make_inputs(9, 16, 300, torch.float32, device)
    target.fill_(-100)
    loss, grads = loss_and_grads(fastgd.linear_cross_entropy, hidden, weight, target, bias,
                                 upstream_for(target, reduction), reduction=reduction,
                                 chunk_size=4)
    assert torch.equal(loss.cpu(), torch.zeros_like(loss).cpu())
    for grad in grads:
        assert torch.equal(grad.cpu(), torch.zeros_like(grad).cpu())


def test_gradients_only_for_inputs_that_require_them(device):
    # A frozen hidden (no d_hidden is computed) and a frozen bias; only the weight trains.
    hidden, weight, bias, target, _ = make_inputs(10, 16, 300, torch.float32, device)
    w = weight.clone().requires_grad_()
    fastgd.linear_cross_entropy(hidden, w, target, linear_bias=bias, chunk_size=3).backward()
    w_ref = weight.clone().requires_grad_()
    torch.nn.functional.cross_entropy(hidden @ w_ref.T + bias, target).backward()
    assert hidden.grad is None and bias.grad is None
    assert_same(w.grad, w_ref.grad, torch.float32, "d_weight")


def test_no_grad_forward(device):
    hidden, weight, bias, target, _ = make_inputs(10, 16, 300, torch.float32, device)
    with torch.no_grad():
        loss = fastgd.linear_cross_entropy(hidden, weight, target, linear_bias=bias, chunk_size=4)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, target)
    assert_same(loss, expected, torch.float32, "loss")


def test_gradient_accumulation_with_num_items(device):
    # Two micro-batches, each divided by the total count of counted tokens, accumulate to the
    # gradients of one big batch with reduction="mean".
    hidden, weight, bias, target, _ = make_inputs(20, 16, 300, torch.float32, device, seed=4)
    total = int((target != -100).sum())
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    for part in (slice(0, 13), slice(13, 20)):  # unequal halves: the counts differ
        fastgd.linear_cross_entropy(hidden[part], w, target[part], linear_bias=b, num_items=total,
                                    chunk_size=4).backward()
    w_big, b_big = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    fastgd.linear_cross_entropy(hidden, w_big, target, linear_bias=b_big, chunk_size=4).backward()
    assert_same(w.grad, w_big.grad, torch.float32, "accumulated d_weight")
    assert_same(b.grad, b_big.grad, torch.float32, "accumulated d_bias")


def test_drop_in_for_lm_head(device):
    # The swap from the issue: F.cross_entropy(lm_head(h).flatten(0, 1), y.flatten()) ->
    # fastgd.linear_cross_entropy(h, lm_head.weight, y, linear_bias=lm_head.bias), through a layer below.
    torch.manual_seed(0)
    body = torch.nn.Linear(16, 16).to(device)
    head = torch.nn.Linear(16, 300).to(device)
    x = torch.randn(2, 7, 16, device=device)
    y = torch.randint(0, 300, (2, 7), device=device)

    def grads(loss_fn):
        body.zero_grad(), head.zero_grad()
        loss = loss_fn(torch.tanh(body(x)))
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in (*body.parameters(),
                                                          *head.parameters())]

    ours = grads(lambda h: fastgd.linear_cross_entropy(h, head.weight, y, linear_bias=head.bias,
                                                       chunk_size=4))
    expected = grads(lambda h: torch.nn.functional.cross_entropy(head(h).flatten(0, 1),
                                                                 y.flatten()))
    for name, a, e in zip(["loss", "body.w", "body.b", "head.w", "head.b"], ours, expected):
        assert_same(a, e, torch.float32, name)


@pytest.mark.parametrize("option", ["all", "z_loss"])
def test_torch_fallback_path(option, device):
    # The PyTorch row path under the same chunking code.
    hidden, weight, bias, target, class_weight = make_inputs(21, 16, 300, torch.float32, device)
    opts = dict(OPTIONS[option], reduction="none", chunk_size=8)
    if opts.pop("class_weight", False):
        opts["weight"] = class_weight
    with fastgd.force_backend("torch"):
        check_against_materialised(hidden, weight, target, bias, torch.float32, **opts)


# The PyTorch path computes the gradients in the forward when the backward's upstream will be
# one value on every row (mean/sum without z-loss; num_items) and recomputes otherwise: each
# reduction and option, scalar and per-row, against the float64 truth.
@pytest.mark.parametrize("option", ["plain", "class_weight+smoothing", "z_loss", "num_items",
                                    "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_path_gradients_from_the_forward_or_recomputed(option, reduction, device):
    if device == "cuda":
        pytest.skip("the PyTorch path of a CPU")
    if option == "num_items" and reduction == "none":
        pytest.skip("num_items divides a summed loss")
    hidden, weight, bias, target, class_weight = make_inputs(21, 16, 300, torch.float32, device)
    opts = dict(OPTIONS.get(option, {}), reduction=reduction, chunk_size=8)
    if opts.pop("class_weight", False):
        opts["weight"] = class_weight
    with fastgd.force_backend("torch"):
        check_against_materialised(hidden, weight, target, bias, torch.float32, **opts)


def test_torch_path_second_backward_recomputes(device):
    """The unit gradients are handed over by the first backward; a second one (retain_graph)
    recomputes, and both equal the recomputing path's."""
    if device == "cuda":
        pytest.skip("the PyTorch path of a CPU")
    hidden, weight, bias, target, _ = make_inputs(9, 16, 300, torch.float32, device)
    w = weight.clone().requires_grad_()
    with fastgd.force_backend("torch"):
        loss = fastgd.linear_cross_entropy(hidden, w, target, linear_bias=bias, chunk_size=4)
    (first,) = torch.autograd.grad(loss * 3.0, w, retain_graph=True)
    (second,) = torch.autograd.grad(loss * 3.0, w)
    torch.testing.assert_close(first, second)
    expected = loss_and_grads(materialised, hidden, weight, target, bias,
                              torch.full((), 3.0, dtype=torch.float64))[1][1]
    assert_same(first, expected, torch.float32, "d_weight")


def test_bf16_weight_gradient_summed_in_fp32_over_many_chunks(device):
    # 128 one-row chunks: were d_weight/d_bias summed in bf16, each of the 128 additions would
    # round (error ~ sqrt(128) bf16 ulps), far beyond torch's one rounding of a single matmul.
    hidden, weight, bias, target, _ = make_inputs(128, 8, 40, torch.bfloat16, device, seed=5,
                                                  ignore_some=False)
    check_against_materialised(hidden, weight, target, bias, torch.bfloat16, reduction="sum",
                               chunk_size=1)
