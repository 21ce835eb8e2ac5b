"""fastgd.Adam / fastgd.AdamW step beside torch.optim.Adam / AdamW(foreach=False): every option,
awkward tensor sizes, several dtypes, a small real model, clipping, GradScaler, LR schedulers.

Interpreted on the CPU, each program of the kernel costs a few ms, so the option matrix is one
optimizer whose param groups hold the combinations: one launch per step covers all of them (and
tests that groups with different hyperparameters share a launch correctly)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import fastgd
from fastgd.launch_config import ADAM_BLOCK
from tolerances import SAME_PRECISION, assert_accurate, assert_same

STEPS = 20
BLOCK = ADAM_BLOCK[torch.float32]

# Shapes of the option matrix, each with the reason it is there.
MATRIX_SHAPES = [
    (),  # 0-dim: a scalar parameter (numel 1, no strides)
    (37,),  # less than a block and not a multiple of the vector width: a masked block
]
# Shapes of the dtype tests.
AWKWARD_SHAPES = [
    (),  # 0-dim
    (1,),  # a single element
    (0,),  # empty: no element to touch, but its step must still advance
    (7, 37),  # 259 elements: less than a block, not a multiple of 16 (vector width)
    (BLOCK * 10 + 1,),  # large: 11 programs, the last with a single element
]
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


# --------------------------------------------------------------------------- helpers
def _options():
    """Every combination of amsgrad x maximize x weight decay (none, L2, decoupled) x tensor lr,
    with group-specific lr, betas and eps so that mixing up two groups cannot go unnoticed."""
    combos = itertools.product([False, True], [False, True], ["none", "l2", "decoupled"],
                               [False, True])
    out = []
    for i, (amsgrad, maximize, decay, tensor_lr) in enumerate(combos):
        out.append(dict(
            amsgrad=amsgrad, maximize=maximize, tensor_lr=tensor_lr,
            weight_decay=0.0 if decay == "none" else 0.05 + 0.01 * (i % 3),
            decoupled_weight_decay=decay == "decoupled",
            lr=1e-2 * (1 + i / 8), betas=(0.9, 0.999) if i % 2 else (0.8, 0.99),
            eps=1e-8 if i % 4 else 1e-6,
        ))
    return out


def _groups(params_per_group, options, max_grad_norm=None):
    groups = []
    for params, opt in zip(params_per_group, options):
        group = {k: v for k, v in opt.items() if k != "tensor_lr"}
        if opt["tensor_lr"]:
            group["lr"] = torch.tensor(opt["lr"], device=params[0].device)
        if max_grad_norm is not None:
            group["max_grad_norm"] = max_grad_norm
        groups.append({"params": params, **group})
    return groups


def _torch_groups(groups):
    return [{k: v for k, v in g.items() if k != "max_grad_norm"} for g in groups]


def _leaves(shapes, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device)
            .requires_grad_() for s in shapes]


def _set_grads(param_lists, step, dtype=None):
    """Seeded gradients (fp64 draws rounded to each parameter's dtype), the same for every list;
    magnitudes vary by tensor and step so that clipping and the moments see real spread."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p0 in enumerate(param_lists[0]):
        g = torch.randn(p0.shape, generator=gen, dtype=torch.float64) * (0.5 + (i + step) % 3)
        for params in param_lists:
            params[i].grad = g.to(dtype or params[i].dtype).to(params[i].dtype).to(
                params[i].device)


def _flat(groups):
    return [p for g in groups for p in g["params"]]


def assert_close_to_scale(ours, expected, dtype, what):
    """The table's same-precision rtol, relative to each element and to the tensor's largest
    element: a moment that cancels to near zero carries rounding errors of its inputs' size."""
    rtol, atol = SAME_PRECISION[dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(ours.detach(), expected.detach(), rtol=rtol,
                               atol=max(atol, rtol * scale), msg=lambda m: f"{what}: {m}")


def _assert_state_same(ours, ref, dtype, tag=""):
    for (p, q) in zip(_flat(ours.param_groups), _flat(ref.param_groups)):
        assert_close_to_scale(p, q, dtype, f"{tag}param {tuple(p.shape)}")
        for key in STATE_KEYS:
            if key in ref.state[q]:
                a, b = ours.state[p][key], ref.state[q][key]
                if key == "step":
                    assert a.item() == b.item(), f"{tag}step {tuple(p.shape)}"
                else:
                    assert_close_to_scale(a, b, dtype, f"{tag}{key} {tuple(p.shape)}")


# --------------------------------------------------------------------------- option matrix
@pytest.mark.parametrize("clip", [None, 1.5], ids=["no-clip", "clip"])
def test_every_option_matches_torch(device, clip):
    options = _options()
    # one awkward tensor per group (alternating shapes): a program per group keeps this fast
    ours_params = [_leaves([MATRIX_SHAPES[(i // 2) % 2]], torch.float32, device, seed=i)
                   for i in range(len(options))]
    ref_params = [[p.detach().clone().requires_grad_() for p in ps] for ps in ours_params]
    ours = fastgd.Adam(_groups(ours_params, options, clip))
    ref = torch.optim.Adam(_torch_groups(_groups(ref_params, options)), foreach=False)
    flat_ours, flat_ref = _flat(ours.param_groups), _flat(ref.param_groups)
    for step in range(STEPS):
        _set_grads([flat_ours, flat_ref], step)
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(flat_ref, clip)
            assert norm > clip, "the test must actually clip"
        ours.step()
        ref.step()
        if clip is not None:
            assert_same(ours.grad_norm, norm, torch.float32, f"grad_norm at step {step}")
    _assert_state_same(ours, ref, torch.float32)


def test_clipping_only_some_groups_with_their_own_max_norm(device):
    """The norm covers the clipping groups; each scales by its own max_grad_norm; a group without
    max_grad_norm is neither counted nor clipped."""
    shapes = [(BLOCK + 3,), (5,)]
    ours_params = [_leaves(shapes, torch.float32, device, seed=s) for s in (1, 2, 3)]
    ref_params = [[p.detach().clone().requires_grad_() for p in ps] for ps in ours_params]
    max_norms = [0.5, None, 2.0]
    ours = fastgd.AdamW([{"params": ps, "max_grad_norm": m}
                         for ps, m in zip(ours_params, max_norms)], lr=0.05)
    ref = torch.optim.AdamW([{"params": ps} for ps in ref_params], lr=0.05, foreach=False)
    for step in range(STEPS):
        _set_grads([_flat(ours.param_groups), _flat(ref.param_groups)], step)
        clipped = [p for ps, m in zip(ref_params, max_norms) if m for p in ps]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                      for p in clipped]))
        for ps, m in zip(ref_params, max_norms):
            if m:
                coef = torch.clamp(m / (total + 1e-6), max=1.0)
                for p in ps:
                    p.grad.mul_(coef)
        ours.step()
        ref.step()
        assert_same(ours.grad_norm, total, torch.float32, "grad_norm")
    _assert_state_same(ours, ref, torch.float32)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype, shapes", [
    (torch.float32, AWKWARD_SHAPES),
    (torch.float64, AWKWARD_SHAPES[:-1]),  # fp64 blocks are the same code as fp32's
], ids=["fp32", "fp64"])
def test_awkward_tensors_match_torch(device, dtype, shapes):
    ours_p = _leaves(shapes, dtype, device, seed=7)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = fastgd.AdamW(ours_p, lr=0.02, weight_decay=0.1, amsgrad=True)
    ref = torch.optim.AdamW(ref_p, lr=0.02, weight_decay=0.1, amsgrad=True, foreach=False)
    for step in range(STEPS):
        _set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    _assert_state_same(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_within_twice_torchs_error(device, dtype):
    """States in the parameter dtype, math in fp32, round-to-nearest-even stores: against a
    float64 run from the same (rounded) start and gradients, at most 2x torch's own error."""
    shapes = [(), (7, 37), (BLOCK * 2 + 5,)]
    ours_p = _leaves(shapes, dtype, device, seed=3)
    same_p = [p.detach().clone().requires_grad_() for p in ours_p]
    truth_p = [p.detach().double().clone().requires_grad_() for p in ours_p]
    kwargs = dict(lr=0.01, weight_decay=0.1, amsgrad=True)
    opts = [fastgd.AdamW(ours_p, **kwargs), torch.optim.AdamW(same_p, foreach=False, **kwargs),
            torch.optim.AdamW(truth_p, foreach=False, **kwargs)]
    for step in range(STEPS):
        _set_grads([ours_p, same_p, truth_p], step, dtype=dtype)
        for opt in opts:
            opt.step()
    for p, s, t in zip(ours_p, same_p, truth_p):
        assert_accurate(p, s, t, dtype, f"param {tuple(p.shape)}")
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert opts[0].state[p][key].dtype == dtype
            assert_accurate(opts[0].state[p][key], opts[1].state[s][key],
                            opts[2].state[t][key], dtype, f"{key} {tuple(p.shape)}")


def test_bf16_stores_round_to_nearest_even(device):
    """One bf16 step equals the fp32 step on the same inputs rounded to nearest even: a
    truncating store would miss about half the elements by one bf16 ulp. (fp32 rounding
    differences may flip a rare element: at most 1 in 1000, and by one ulp.)"""
    ours_p = _leaves([(BLOCK + 77,)], torch.bfloat16, device, seed=9)
    wide_p = [p.detach().float().requires_grad_() for p in ours_p]
    ours = fastgd.AdamW(ours_p, lr=0.01, weight_decay=0.1)
    wide = torch.optim.AdamW(wide_p, lr=0.01, weight_decay=0.1, foreach=False)
    for step in range(2):  # the second step starts from bf16 moments in both
        _set_grads([ours_p, wide_p], step, dtype=torch.bfloat16)
        ours.step()
        wide.step()
        pairs = [(ours_p[0], wide_p[0])] + [(ours.state[ours_p[0]][k], wide.state[wide_p[0]][k])
                                             for k in ("exp_avg", "exp_avg_sq")]
        for mine, exact in pairs:
            expected = exact.detach().to(torch.bfloat16)
            ulp_bits = (mine.detach().view(torch.int16).int() - expected.view(torch.int16).int())
            assert ulp_bits.abs().max() <= 1
            assert (ulp_bits != 0).float().mean() <= 1e-3, "bf16 stores do not round to nearest"
        for p, q in zip(ours_p, wide_p):  # continue both from the same bf16 values
            q.data.copy_(p.detach().float())
        for k in ("exp_avg", "exp_avg_sq"):
            wide.state[wide_p[0]][k].copy_(ours.state[ours_p[0]][k].float())


def test_mixed_dtypes_and_complex_in_one_group(device):
    """fp32, fp64 and complex64 parameters in one group: one launch per dtype (complex as its
    real view, as torch computes it)."""
    params = [torch.randn(9, dtype=torch.float32), torch.randn(9, dtype=torch.float64),
              torch.randn(4, 3, dtype=torch.complex64)]
    ours_p = [p.to(device).requires_grad_() for p in params]
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = fastgd.Adam(ours_p, lr=0.03, weight_decay=0.01)
    ref = torch.optim.Adam(ref_p, lr=0.03, weight_decay=0.01, foreach=False)
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(ours_p, ref_p):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(ours_p, ref_p):
        real = torch.float64 if p.dtype == torch.float64 else torch.float32
        assert_same(torch.view_as_real(p.detach()) if p.is_complex() else p.detach(),
                    torch.view_as_real(q.detach()) if q.is_complex() else q.detach(),
                    real, f"{p.dtype} param")


def test_strided_parameters_and_gradients(device):
    """A transposed (dense, not contiguous) parameter with a gradient in another layout, and a
    sliced (not dense) parameter updated through a copy."""
    ours_p = [torch.nn.Parameter(torch.randn(10, 6, device=device).t()),  # dense, transposed
              torch.nn.Parameter(torch.randn(12, 10, device=device)[:, ::2])]  # not dense
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    assert not ours_p[0].is_contiguous() and not ours_p[1].is_contiguous()
    ours = fastgd.AdamW(ours_p, lr=0.05)
    ref = torch.optim.AdamW(ref_p, lr=0.05, foreach=False)
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(ours_p, ref_p):
            g = torch.randn(p.shape, generator=gen).to(device)  # contiguous: not p's layout
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    _assert_state_same(ours, ref, torch.float32)


# --------------------------------------------------------------------------- a real model
def _mlp(device, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                                torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(device)
    model[2].requires_grad_(False)  # a frozen layer
    model.extra = torch.nn.Parameter(torch.randn(3, device=device))  # no gradient on odd steps
    return model


def _loss(model, step, device):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(8, 6, generator=gen).to(device)
    y = torch.randint(0, 3, (8,), generator=gen).to(device)
    logits = model(x)
    if step % 2 == 0:
        logits = logits + model.extra
    return torch.nn.functional.cross_entropy(logits, y)


@pytest.mark.parametrize("clip", [None, 0.3], ids=["no-clip", "clip"])
def test_mlp_training_matches_torch(device, clip):
    ours_m, ref_m = _mlp(device), _mlp(device)
    ours = fastgd.AdamW(ours_m.parameters(), lr=3e-2, weight_decay=0.1, max_grad_norm=clip)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=3e-2, weight_decay=0.1, foreach=False)
    for step in range(STEPS):
        for model, opt in ((ours_m, ours), (ref_m, ref)):
            opt.zero_grad()
            _loss(model, step, device).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref_m.parameters(), clip)
        ours.step()
        ref.step()
    _assert_state_same(ours, ref, torch.float32)
    assert not ours.state[ours_m[2].weight], "a frozen parameter gets no state"
    assert ours.state[ours_m.extra]["step"].item() == STEPS // 2


# --------------------------------------------------------------------------- GradScaler
def test_grad_scaler_skips_inf_step_then_matches_torch(device):
    ours_m, ref_m = _mlp(device), _mlp(device)
    ours = fastgd.AdamW(ours_m.parameters(), lr=1e-2, max_grad_norm=1.0)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler(device, init_scale=2.0 ** 10, growth_interval=3)
               for _ in range(2)]
    for step in range(8):
        snapshot = [(p.detach().clone(), {k: v.clone() for k, v in ours.state[p].items()})
                    for p in ours_m.parameters()]
        for model, opt, scaler in ((ours_m, ours, scalers[0]), (ref_m, ref, scalers[1])):
            opt.zero_grad()
            scaler.scale(_loss(model, step, device)).backward()
            if step in (2, 5):
                model[0].weight.grad[0, 1] = float("inf") if step == 2 else float("nan")
        scalers[1].unscale_(ref)
        torch.nn.utils.clip_grad_norm_(ref_m.parameters(), 1.0)
        for opt, scaler in ((ours, scalers[0]), (ref, scalers[1])):
            scaler.step(opt)
            scaler.update()
        if step in (2, 5):
            for p, (value, state) in zip(ours_m.parameters(), snapshot):
                assert torch.equal(p.detach(), value), "a parameter changed on a skipped step"
                for key, before in state.items():
                    assert torch.equal(ours.state[p][key], before), f"{key} changed"
        assert scalers[0].get_scale() == scalers[1].get_scale()
        _assert_state_same(ours, ref, torch.float32, f"step {step}: ")


def test_grad_scaler_after_explicit_unscale_and_manual_clipping(device):
    """scaler.unscale_(opt) first (the user clips by hand): step() then gets no scale, only
    found_inf, and must not unscale a second time."""
    ours_m, ref_m = _mlp(device), _mlp(device)
    ours = fastgd.AdamW(ours_m.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1e-2, foreach=False)
    scalers = [torch.amp.GradScaler(device, init_scale=2.0 ** 8) for _ in range(2)]
    for step in range(4):
        for model, opt, scaler in ((ours_m, ours, scalers[0]), (ref_m, ref, scalers[1])):
            opt.zero_grad()
            scaler.scale(_loss(model, step, device)).backward()
            if step == 1:
                model[4].bias.grad[0] = float("inf")
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
            scaler.step(opt)
            scaler.update()
    assert ours.state[ours_m[0].weight]["step"].item() == 3
    _assert_state_same(ours, ref, torch.float32)


def test_tensor_betas_and_float64_tensor_lr(device):
    """lr and betas as 0-dim tensors of either float dtype are read by the kernel."""
    ours_p = _leaves([(37,)], torch.float32, device, seed=10)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    hyper = dict(lr=torch.tensor(0.03, dtype=torch.float64, device=device),
                 betas=(torch.tensor(0.85, device=device), torch.tensor(0.99, device=device)))
    ours = fastgd.Adam(ours_p, **hyper)
    ref = torch.optim.Adam(ref_p, **hyper, foreach=False)
    for step in range(5):
        _set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    _assert_state_same(ours, ref, torch.float32)


def test_found_inf_keyword_leaves_everything_unchanged(device):
    params = _leaves([(5,), (BLOCK + 9,)], torch.float32, device, seed=4)
    opt = fastgd.Adam(params, lr=0.1, amsgrad=True, max_grad_norm=1.0)
    _set_grads([params], 0)
    opt.step()
    before = [p.detach().clone() for p in params]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    _set_grads([params], 1)
    opt.step(grad_scale=torch.tensor(4.0, device=device),
             found_inf=torch.tensor(1.0, device=device))
    for p, b, s in zip(params, before, states):
        assert torch.equal(p.detach(), b)
        for key, value in s.items():
            assert torch.equal(opt.state[p][key], value), key


def test_grad_scale_keyword_unscales_before_clipping(device):
    """grad_scale=S on S-times gradients is the step on the plain gradients, norm included."""
    a = _leaves([(BLOCK + 2,)], torch.float32, device, seed=5)
    b = [p.detach().clone().requires_grad_() for p in a]
    opts = [fastgd.Adam(ps, lr=0.1, max_grad_norm=0.5) for ps in (a, b)]
    for step in range(3):
        _set_grads([a, b], step)
        a[0].grad.mul_(1024.0)
        opts[0].step(grad_scale=torch.tensor(1024.0, device=device),
                     found_inf=torch.tensor(0.0, device=device))
        opts[1].step()
        assert_same(opts[0].grad_norm, opts[1].grad_norm, torch.float32, "grad_norm")
    assert_same(a[0].detach(), b[0].detach(), torch.float32, "param")


# --------------------------------------------------------------------------- LR schedulers
@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
def test_warmup_cosine_lambda_lr_drives_the_same_steps(device, tensor_lr):
    def warmup_cosine(step, warmup=4, total=STEPS):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    lr = torch.tensor(0.05, device=device) if tensor_lr else 0.05
    ours_p = _leaves([(BLOCK + 1,), ()], torch.float32, device, seed=6)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = fastgd.AdamW(ours_p, lr=lr.clone() if tensor_lr else lr)
    ref = torch.optim.AdamW(ref_p, lr=lr, foreach=False)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, warmup_cosine) for o in (ours, ref)]
    for step in range(STEPS):
        _set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
        for s in scheds:
            s.step()
        assert float(ours.param_groups[0]["lr"]) == float(ref.param_groups[0]["lr"])
    _assert_state_same(ours, ref, torch.float32)


def test_one_cycle_lr_with_momentum_cycling(device):
    """OneCycleLR changes lr and betas[0] every step: the group table follows both."""
    ours_p = _leaves([(37,)], torch.float32, device, seed=8)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours, ref = fastgd.AdamW(ours_p), torch.optim.AdamW(ref_p, foreach=False)
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=STEPS)
              for o in (ours, ref)]
    for step in range(STEPS):
        _set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
        for s in scheds:
            s.step()
        assert ours.param_groups[0]["betas"] == ref.param_groups[0]["betas"]
    _assert_state_same(ours, ref, torch.float32)
