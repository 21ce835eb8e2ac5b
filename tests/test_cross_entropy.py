"""fastgd.cross_entropy against PyTorch: every option, alone and combined, in every dtype.

Run interpreted on CPU (CI) and compiled on CUDA, through the same tests."""
import pytest
import torch

import fastgd
from ce_cases import SHAPES, check_against_torch, loss_and_grad, make_inputs, upstream_like
from tolerances import assert_accurate

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]}xV{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plain_matches_torch(dtype, shape, reduction, device):
    logits, target, _ = make_inputs(*shape, dtype, device)
    check_against_torch(logits, target, dtype, reduction=reduction)


# Each option alone, then all together (and with class weights, which change every term).
OPTIONS = {
    "weight": dict(weight=True),
    "smoothing": dict(label_smoothing=0.1),
    "weight+smoothing": dict(weight=True, label_smoothing=0.2),
    "z_loss": dict(z_loss=1e-3),
    "softcap": dict(softcap=4.0),  # below the logits' spread, so the cap really bends them
    "logit_scale": dict(logit_scale=0.37),
    "ignore_index=3": dict(ignore_index=3),
    "return_lse": dict(return_lse=True),
    "all": dict(weight=True, label_smoothing=0.15, z_loss=1e-2, softcap=5.0, logit_scale=1.7,
                return_lse=True),
}


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("option", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_options_match_torch(dtype, option, reduction, device):
    logits, target, weight = make_inputs(6, 300, dtype, device, seed=2)
    opts = dict(OPTIONS[option], reduction=reduction)
    if opts.pop("weight", False):
        opts["weight"] = weight.to(dtype)
    if option == "ignore_index=3":
        target[target == -100] = 3  # the ignored rows use the custom index
    check_against_torch(logits, target, dtype, **opts)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_options_with_sum_and_loop(reduction, device):
    # Every option at once on rows longer than a block: the smoothing and weight sums must
    # accumulate across loop iterations and the masked tail.
    logits, target, weight = make_inputs(3, 2 * 4096 + 5, torch.float32, device, seed=3)
    check_against_torch(logits, target, torch.float32, reduction=reduction, weight=weight.float(),
                        label_smoothing=0.1, z_loss=1e-3, softcap=6.0, logit_scale=0.9)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_gives_zero_not_nan(reduction, device):
    logits, target, weight = make_inputs(4, 50, torch.float32, device)
    target.fill_(-100)
    x = logits.clone().requires_grad_()
    loss = fastgd.cross_entropy(x, target, weight.float(), reduction=reduction, z_loss=1e-2,
                                label_smoothing=0.1)
    loss.sum().backward()
    assert torch.all(loss == 0), loss
    assert torch.all(x.grad == 0)


def test_large_vocab_rows(device):
    # Llama-3's vocabulary: 32 loop iterations per row, the masked tail is 128256 % 4096 = 1280.
    logits, target, _ = make_inputs(2, 128256, torch.bfloat16, device, ignore_some=False)
    check_against_torch(logits, target, torch.bfloat16, reduction="mean")


def test_confident_true_class_gradient_does_not_cancel(device):
    # p(true) ~ 0.999: its gradient p - 1 ~ -1e-3 must come from fp32 math, not from a bf16 p
    # (where 1 - p would round to 0 or to a multiple of 2**-8).
    gen = torch.Generator().manual_seed(5)
    v = 1000
    logits = torch.randn(4, v, generator=gen, dtype=torch.float64) * 0.1
    target = torch.randint(0, v, (4,), generator=gen)
    logits[torch.arange(4), target] = 14.0  # exp(14) / (exp(14) + ~1000) ~ 0.9992
    logits = logits.to(torch.bfloat16).to(device)
    target = target.to(device)
    _, grad = loss_and_grad(fastgd.cross_entropy, logits, target, torch.ones((), device=device),
                            reduction="sum")
    x = logits.double().requires_grad_()
    torch.nn.functional.cross_entropy(x, target, reduction="sum").backward()
    rows = torch.arange(4, device=device)
    ours, truth = grad[rows, target].double(), x.grad[rows, target]
    assert torch.all(truth < -5e-4)
    rel = ((ours - truth).abs() / truth.abs()).max().item()
    assert rel < 2 ** -8, f"true-class gradient off by {rel:.2e} relative: {ours} vs {truth}"


@pytest.mark.parametrize("masked", ["first tile", "all but the target"])
def test_minus_inf_logits(masked, device):
    # Masked vocabulary entries (-inf logits): a whole tile of -inf must not poison the running
    # max/sum of the online logsumexp (exp(-inf - -inf) is NaN).
    logits, target, _ = make_inputs(3, 2 * 4096 + 37, torch.float32, device, ignore_some=False)
    target = target.clamp(min=4096)  # targets outside the masked first tile
    if masked == "first tile":
        logits[:, :4096] = float("-inf")
    else:
        keep = logits.gather(1, target[:, None])
        logits.fill_(float("-inf")).scatter_(1, target[:, None], keep)
    x = logits.clone().requires_grad_()
    loss = fastgd.cross_entropy(x, target, reduction="none")
    loss.sum().backward()
    y = logits.double().requires_grad_()
    expected = torch.nn.functional.cross_entropy(y, target, reduction="none")
    expected.sum().backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-6, atol=1e-7)


def test_bf16_gradient_rounds_to_nearest_even(device):
    # The gradient is computed in fp32 and rounded once, to nearest even: it must equal the exact
    # gradient rounded by torch almost everywhere (a truncating store would miss about half).
    logits, target, _ = make_inputs(4, 3000, torch.bfloat16, device)
    _, grad = loss_and_grad(fastgd.cross_entropy, logits, target, torch.ones((), device=device),
                            reduction="sum")
    x = logits.double().requires_grad_()
    torch.nn.functional.cross_entropy(x, target, reduction="sum").backward()
    same = (grad == x.grad.to(torch.bfloat16)).double().mean().item()
    assert same > 0.99, f"only {same:.1%} of the gradient is correctly rounded"


def test_non_contiguous_inputs(device):
    logits, target, _ = make_inputs(6, 300, torch.float32, device)
    wide = torch.empty(6, 600, device=device)
    wide[:, ::2], wide[:, 1::2] = logits, -logits
    strided = wide[:, ::2]  # class stride 2: the kernel honours strides
    assert not strided.is_contiguous()
    check_against_torch(strided, target, torch.float32)
    transposed = logits.t().contiguous().t()  # row stride 1, class stride N
    check_against_torch(transposed, target, torch.float32, reduction="none")


def test_extra_dims_layout_follows_torch(device):
    # (N, C, d1, d2) logits with (N, d1, d2) targets, as F.cross_entropy accepts.
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 11, 3, 4, generator=gen).to(device)
    target = torch.randint(0, 11, (2, 3, 4), generator=gen).to(device)
    target[0, 1, 2] = -100
    for reduction in ("mean", "none"):
        check_against_torch(logits, target, torch.float32, reduction=reduction)


def test_single_row_shape_c(device):
    # (C,) logits with a 0-dim target.
    logits, target, _ = make_inputs(1, 40, torch.float32, device, ignore_some=False)
    check_against_torch(logits[0], target[0], torch.float32, reduction="none")
    check_against_torch(logits[0], target[0], torch.float32)


def test_int32_targets(device):
    logits, target, _ = make_inputs(5, 33, torch.float32, device)
    ours = fastgd.cross_entropy(logits, target.int())
    expected = fastgd.cross_entropy(logits, target)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items(as_tensor, device):
    logits, target, weight = make_inputs(8, 70, torch.float32, device)
    num_items = torch.tensor(13, device=device) if as_tensor else 13
    check_against_torch(logits, target, torch.float32, num_items=num_items, z_loss=1e-3,
                        weight=weight.float())


def test_gradient_accumulation_with_num_items(device):
    # Two micro-batches, each normalised by the token count of the whole batch, give the
    # gradient of one big batch's mean.
    logits, target, _ = make_inputs(10, 90, torch.float32, device, seed=11)
    total = (target != -100).sum()
    x = logits.clone().requires_grad_()
    for part in (slice(0, 4), slice(4, 10)):
        fastgd.cross_entropy(x[part], target[part], num_items=total).backward()
    y = logits.clone().requires_grad_()
    fastgd.cross_entropy(y, target).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-6, atol=1e-8)


def test_return_lse_values(device):
    logits, target, _ = make_inputs(5, 120, torch.bfloat16, device)
    _, lse = fastgd.cross_entropy(logits, target, return_lse=True, softcap=3.0, logit_scale=2.0)
    truth = torch.logsumexp(3.0 * torch.tanh(logits.double() * 2.0 / 3.0), dim=1)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), truth, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("option", ["plain", "all"])
def test_torch_fallback_path(option, device):
    # The PyTorch path (what runs on CPU without the interpreter) meets the same rule.
    logits, target, weight = make_inputs(4, 2 * 4096 + 37, torch.bfloat16, device)
    opts = {} if option == "plain" else dict(
        weight=weight.to(torch.bfloat16), label_smoothing=0.1, z_loss=1e-3, softcap=5.0,
        logit_scale=1.3, return_lse=True, reduction="none")
    with fastgd.force_backend("torch"):
        ours_loss, ours_grad, _, _ = check_against_torch(logits, target, torch.bfloat16, **opts)
    kernel_loss, kernel_grad = loss_and_grad(
        fastgd.cross_entropy, logits, target,
        upstream_like(torch.empty(target.shape if opts else (), device=device)), **opts)
    # Same math in the same precision: the two backends agree to fp32 rounding.
    torch.testing.assert_close(ours_loss, kernel_loss, rtol=1e-5, atol=1e-6)
    assert_accurate(kernel_grad, ours_grad, ours_grad.double(), torch.bfloat16, "kernel vs torch")
