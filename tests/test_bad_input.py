"""Bad input, state dicts and options, on both paths (the kernels -- compiled on CUDA, interpreted
on CPU -- and the PyTorch path): each gives a clear error, torch's behaviour, or a documented
one, and the same on both paths.

The cases that could make a kernel touch memory it does not own run in a child process
(tests/crash_cases.py), so that a crash fails a test instead of killing the run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastgd
from fastgd import guard
from fastgd.errors import InvalidTypeError, InvalidValueError
from tolerances import SAME_PRECISION

PATHS = ["kernels", "torch"]
CRASH_CASES = Path(__file__).with_name("crash_cases.py")


def _on(path):
    return fastgd.force_backend("torch") if path == "torch" else contextlib.nullcontext()


# --------------------------------------------------------------------------- memory safety
# case -> (fastgd exception type, words the message must contain)
EXPECTED = {
    "exp_avg_smaller_in_state_dict": (InvalidValueError, "'exp_avg' of param_groups[0]"),
    "exp_avg_larger_in_state_dict": (InvalidValueError, "'exp_avg_sq' of param_groups[0]"),
    "param_data_replaced_by_bigger": (InvalidValueError, "p.data replaced"),
    "param_data_replaced_by_float64": (InvalidValueError, "p.data replaced"),
    "grad_data_smaller": (InvalidValueError, "the gradient of param_groups[0]['params'][0]"),
    "grad_data_float64": (InvalidValueError, "the gradient of param_groups[0]['params'][0]"),
    "state_replaced_after_step": (InvalidValueError, "state 'exp_avg' of param_groups[0]"),
    "state_storage_freed": (InvalidTypeError, "no memory"),
    "found_inf_with_three_elements": (InvalidValueError, "found_inf"),
    "row_op_target_shorter_than_logits": (InvalidValueError, "target has shape (2,)"),
    "row_op_weight_shorter_than_classes": (InvalidValueError, "weight has shape (3,)"),
    "inplace_backward_on_expanded_logits": (InvalidValueError, "share memory"),
}


@pytest.fixture(scope="module")
def crash_results(device):
    """Every case of crash_cases.py, per path, each path in one child process."""
    results = {}
    for path in PATHS:
        env = dict(os.environ)
        if device == "cpu" and path == "kernels":
            env["TRITON_INTERPRET"] = "1"
        proc = subprocess.run([sys.executable, str(CRASH_CASES), path, device], env=env,
                              capture_output=True, text=True, timeout=600,
                              cwd=CRASH_CASES.parent)
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        done = {r["case"]: r for r in lines if "case" in r}
        started = [r["start"] for r in lines if "start" in r]
        results[path] = (proc.returncode, done, started, proc.stderr[-2000:])
    return results


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", EXPECTED)
def test_memory_unsafe_input_is_a_clear_error(crash_results, path, case):
    returncode, done, started, stderr = crash_results[path]
    if case not in done:
        crashed_in = started[-1] if started else "(before the first case)"
        pytest.fail(f"the {path} child process died (exit {returncode}) in {crashed_in}:\n{stderr}")
    error, words = EXPECTED[case]
    result = done[case]
    assert result["error"] is not None, f"{case}: nothing raised on the {path} path"
    assert result["error"][0] == error.__name__, result
    assert words in result["message"], result["message"]


@pytest.mark.slow
@pytest.mark.parametrize("case", EXPECTED)
def test_both_paths_give_the_same_error(crash_results, case):
    messages = [crash_results[path][1].get(case) for path in PATHS]
    assert messages[0] == messages[1]


def test_guard_refuses_what_a_kernel_must_not_touch():
    base = torch.randn(6)
    with pytest.raises(InvalidValueError, match="meta device"):
        guard.require_tensor(torch.empty(3, device="meta"), "x")
    with pytest.raises(InvalidValueError, match="share memory"):
        guard.require_tensor(base[:1].expand(4), "x", writable=True)
    guard.require_tensor(base[:1].expand(4), "x")  # reading an expanded tensor is fine
    with pytest.raises(InvalidValueError, match="strides"):
        guard.require_tensor(torch.randn(3, 4).t(), "x", strides=(4, 1))
    shrunk = torch.randn(64)
    view = shrunk[32:]
    shrunk.untyped_storage().resize_(16 * 4)  # the view now reaches past its storage
    with pytest.raises((InvalidValueError, InvalidTypeError), match="storage|memory"):
        guard.require_tensor(view, "x")
    with pytest.raises(InvalidTypeError, match="sparse|layout"):
        guard.require_tensor(torch.eye(3).to_sparse(), "x")


@pytest.mark.parametrize("shape, strides, overlaps", [
    ((4, 3), (3, 1), False),  # contiguous
    ((4, 3), (1, 4), False),  # transposed
    ((4, 3), (0, 1), True),  # expanded rows
    ((4, 3), (2, 1), True),  # rows overlap by one element
    ((4, 1), (1, 0), False),  # a size-1 dim's stride does not matter
    ((0, 3), (0, 0), False),  # empty
])
def test_internal_overlap(shape, strides, overlaps):
    t = torch.randn(16).as_strided(shape, strides)
    assert guard.has_internal_overlap(t) == overlaps


# --------------------------------------------------------------------------- optimizer
@pytest.mark.parametrize("path", PATHS)
def test_legacy_python_number_step_loads_as_torch_does(path, device):
    """torch's own test suite loads a state whose step is a Python float."""
    def run(opt_class):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 7, device=device, dtype=torch.float64))
        opt = opt_class([p], lr=0.1)
        p.grad = torch.full_like(p, 0.5)
        opt.step()
        sd = opt.state_dict()
        sd["state"][0]["step"] = 3.0
        opt.load_state_dict(sd)
        p.grad = torch.linspace(1, 2, 7, device=device, dtype=torch.float64)
        opt.step()
        return p.detach(), float(opt.state[p]["step"])

    with _on(path):
        ours, ours_step = run(fastgd.AdamW)
    ref, ref_step = run(lambda ps, lr: torch.optim.AdamW(ps, lr=lr, foreach=False))
    assert ours_step == ref_step == 4.0
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def test_meta_parameters_step_as_in_torch():
    ours_p = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    ref_p = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    ours, ref = fastgd.AdamW([ours_p], amsgrad=True), torch.optim.AdamW([ref_p], amsgrad=True)
    for _ in range(2):
        for p, opt in ((ours_p, ours), (ref_p, ref)):
            p.grad = torch.empty_like(p)
            opt.step()
    assert ours.state[ours_p].keys() == ref.state[ref_p].keys()
    for key, value in ref.state[ref_p].items():
        mine = ours.state[ours_p][key]
        assert (mine.device, mine.dtype, mine.shape) == (value.device, value.dtype, value.shape)
    assert float(ours.state[ours_p]["step"]) == 2.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_adam_with_default_eps_is_finite_and_the_same_on_both_paths(dtype, device):
    """torch's own float16 Adam computes in float16, where eps=1e-8 is 0: a zero second moment
    then divides by zero. fastgd computes in float32 on both paths (documented)."""
    grad = torch.zeros(64, device=device, dtype=dtype)
    grad[::3] = 1e-3
    results = {}
    for path in PATHS:
        p = torch.nn.Parameter(torch.linspace(-1, 1, 64, device=device).to(dtype))
        opt = fastgd.Adam([p], lr=1e-2)
        with _on(path):
            for _ in range(3):
                p.grad = grad.clone()
                opt.step()
        results[path] = (p.detach().float(), opt.state[p]["exp_avg"].float())
        assert p.isfinite().all(), path
    # torch's update in float32, with the parameter and its states rounded to the 16-bit dtype
    # after each step, as they are stored
    ref = torch.nn.Parameter(torch.linspace(-1, 1, 64, device=device).to(dtype).float())
    ref_opt = torch.optim.Adam([ref], lr=1e-2, foreach=False)
    for _ in range(3):
        ref.grad = grad.float()
        ref_opt.step()
        for t in (ref.data, ref_opt.state[ref]["exp_avg"], ref_opt.state[ref]["exp_avg_sq"]):
            t.copy_(t.to(dtype))
    rtol, atol = SAME_PRECISION[dtype]
    for path, (p, _) in results.items():
        torch.testing.assert_close(p, ref.detach().to(dtype).float(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{path}: {m}")
    torch.testing.assert_close(results["kernels"][1], results["torch"][1], rtol=rtol, atol=atol)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(eps=-1.0), dict(betas=(1.0, 0.9)),
                                    dict(betas=(0.9, 1.5)), dict(weight_decay=-1.0),
                                    dict(lr=torch.tensor([1.0, 2.0]))], ids=str)
def test_optimizer_options_raise_torchs_error_with_torchs_words(kwargs):
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(Exception) as theirs:
        torch.optim.AdamW([p], **kwargs)
    with pytest.raises(type(theirs.value)) as ours:
        fastgd.AdamW([p], **kwargs)
    assert str(ours.value).startswith(str(theirs.value))


# --------------------------------------------------------------------------- losses
def _logits(n=4, c=7, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=gen, dtype=torch.float64).float().to(device)


TORCH_REFUSES = {
    # mistake -> call(fn, logits, target); torch and fastgd must both refuse, with torch's type
    "target out of range": lambda fn, x, t: fn(x, t.clamp(min=0) + 7),
    "negative target": lambda fn, x, t: fn(x, torch.full_like(t, -3)),
    "batch mismatch": lambda fn, x, t: fn(x, t[:3]),
    "weight length": lambda fn, x, t: fn(x, t, weight=torch.ones(3)),
    "label_smoothing > 1": lambda fn, x, t: fn(x, t, label_smoothing=1.5),
    "bad reduction": lambda fn, x, t: fn(x, t, reduction="avg"),
    "integer logits": lambda fn, x, t: fn(x.long(), t),
    "bool target": lambda fn, x, t: fn(x, t > 2),
    "0-dim input": lambda fn, x, t: fn(x[0, 0], t[0]),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mistake", TORCH_REFUSES)
def test_loss_mistakes_raise_torchs_exception_type(mistake, path):
    call = TORCH_REFUSES[mistake]
    x, t = _logits(), torch.tensor([0, 1, 2, 3])
    with pytest.raises(Exception) as theirs:
        call(F.cross_entropy, x, t)
    with _on(path), pytest.raises(type(theirs.value)):
        call(fastgd.cross_entropy, x, t)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_any_integer_target_dtype_is_accepted(dtype, path, device):
    x, t = _logits(device=device), torch.tensor([0, 1, 2, 6], device=device)
    with _on(path):
        ours = fastgd.cross_entropy(x, t.to(dtype))
    torch.testing.assert_close(ours, F.cross_entropy(x, t))


@pytest.mark.parametrize("path", PATHS)
def test_tensor_label_smoothing_is_accepted(path, device):
    x, t = _logits(device=device), torch.tensor([0, 1, 2, 6], device=device)
    with _on(path):
        ours = fastgd.cross_entropy(x, t, label_smoothing=torch.tensor(0.2))
    torch.testing.assert_close(ours, F.cross_entropy(x, t, label_smoothing=0.2))


@pytest.mark.parametrize("path", PATHS)
def test_infinite_logits_give_torchs_nan(path, device):
    """A +inf logit makes the row NaN in torch (inf - inf); so does a row of -inf only."""
    x, t = _logits(device=device), torch.tensor([0, 1, 2, 3], device=device)
    x[0, 2] = math.inf
    x[1, :] = -math.inf
    with _on(path):
        ours = fastgd.cross_entropy(x, t, reduction="none")
    expected = F.cross_entropy(x, t, reduction="none")
    assert ours.isnan().tolist() == expected.isnan().tolist() == [True, True, False, False]
    torch.testing.assert_close(ours[2:], expected[2:])


@pytest.mark.parametrize("path", PATHS)
def test_inplace_backward_refuses_expanded_logits_and_leaves_the_base_alone(path, device):
    base = _logits(1, 7, device)
    before = base.clone()
    logits = base.expand(4, 7).requires_grad_()
    with _on(path), pytest.raises(InvalidValueError, match="inplace_backward"):
        fastgd.cross_entropy(logits, torch.tensor([0, 1, 2, 3], device=device),
                             inplace_backward=True)
    assert torch.equal(base, before)


@pytest.mark.parametrize("path", PATHS)
def test_expanded_logits_without_inplace_match_torch(path, device):
    base = _logits(1, 7, device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    ours_x, ref_x = (base.clone().requires_grad_() for _ in range(2))
    with _on(path):
        fastgd.cross_entropy(ours_x.expand(4, 7), t).backward()
    F.cross_entropy(ref_x.expand(4, 7), t).backward()
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("path", PATHS)
def test_class_weights_summing_to_zero_give_zero_as_all_ignored(path, device):
    """Documented: with mean, no counted weight gives 0 and a zero gradient (torch: NaN)."""
    x = _logits(device=device).requires_grad_()
    weight = torch.zeros(7, device=device)
    with _on(path):
        loss = fastgd.cross_entropy(x, torch.tensor([0, 1, 2, 3], device=device), weight)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(x.grad) == 0
    assert F.cross_entropy(x.detach(), torch.tensor([0, 1, 2, 3], device=device), weight).isnan()


@pytest.mark.parametrize("path", PATHS)
def test_linear_cross_entropy_with_no_features_is_the_bias_loss(path, device):
    """H = 0: the logits are the bias (F.linear gives that too)."""
    gen = torch.Generator().manual_seed(3)
    bias = torch.randn(5, generator=gen).to(device)
    hidden, weight = torch.empty(2, 3, 0, device=device), torch.empty(5, 0, device=device)
    t = torch.tensor([[0, 1, 2], [3, 4, 0]], device=device)
    ours_b, ref_b = (bias.clone().requires_grad_() for _ in range(2))
    with _on(path):
        ours = fastgd.linear_cross_entropy(hidden, weight, t, linear_bias=ours_b)
    ours.backward()
    ref = F.cross_entropy(F.linear(hidden, weight, ref_b).flatten(0, 1), t.flatten())
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_b.grad, ref_b.grad)
