"""fastgd.Adam / AdamW as torch optimizers: checkpoints both ways with torch, bit-exact resume,
hooks, copies, param groups added later, argument errors, the PyTorch path, one launch per
(device, dtype), and the pointer tables reused across steps."""
from __future__ import annotations

import copy
import io
import pickle
import struct

import pytest
import torch

import fastgd
from fastgd.optim import launch as optim_launch
from fastgd.optim.launch_cache import LaunchCache
from fastgd.launch_config import ADAM_BLOCK
from fastgd.kernels import adam as adam_kernels
from test_optim import _assert_state_same, _leaves, _loss, _mlp, _set_grads

STEPS = 5  # per phase: these tests check bookkeeping, test_optim.py checks the numbers


def _train(model, opt, steps, device, first_step=0):
    for step in range(first_step, first_step + steps):
        opt.zero_grad()
        _loss(model, step, device).backward()
        opt.step()


# --------------------------------------------------------------------------- checkpoints
def test_state_dict_from_fastgd_into_torch_continues_identically(device):
    ours_m = _mlp(device)
    ours = fastgd.AdamW(ours_m.parameters(), lr=2e-2, weight_decay=0.1, amsgrad=True)
    _train(ours_m, ours, STEPS, device)
    ref_m = copy.deepcopy(ours_m)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=1.0, foreach=False)  # lr comes from the dict
    ref.load_state_dict(copy.deepcopy(ours.state_dict()))  # state_dict() shares tensors
    assert ref.param_groups[0]["lr"] == 2e-2 and ref.param_groups[0]["amsgrad"]
    _train(ours_m, ours, STEPS, device, first_step=STEPS)
    _train(ref_m, ref, STEPS, device, first_step=STEPS)
    _assert_state_same(ours, ref, torch.float32)


def test_state_dict_from_torch_into_fastgd_continues_identically(device):
    ref_m = _mlp(device)
    ref = torch.optim.AdamW(ref_m.parameters(), lr=2e-2, weight_decay=0.1, foreach=False)
    _train(ref_m, ref, STEPS, device)
    ours_m = copy.deepcopy(ref_m)
    ours = fastgd.AdamW(ours_m.parameters(), max_grad_norm=5.0)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    step = ours.state[ours_m[0].weight]["step"]
    assert step.dtype == torch.float32 and step.device == ours_m[0].weight.device
    assert ours.param_groups[0]["max_grad_norm"] == 5.0, "our extra survives torch's state"
    _train(ours_m, ours, STEPS, device, first_step=STEPS)
    _train(ref_m, ref, STEPS, device, first_step=STEPS)
    # (max_grad_norm=5 never clips this model's gradients, so torch's run is the reference)
    _assert_state_same(ours, ref, torch.float32)


def test_save_load_resume_is_bit_exact(device):
    straight_m = _mlp(device)
    straight = fastgd.AdamW(straight_m.parameters(), lr=2e-2, max_grad_norm=0.5)
    _train(straight_m, straight, 2 * STEPS, device)

    first_m = _mlp(device)
    first = fastgd.AdamW(first_m.parameters(), lr=2e-2, max_grad_norm=0.5)
    _train(first_m, first, STEPS, device)
    buffer = io.BytesIO()
    torch.save({"model": first_m.state_dict(), "optim": first.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_m = _mlp(device, seed=123)  # different initial values, replaced by the checkpoint
    resumed = fastgd.AdamW(resumed_m.parameters(), lr=1.0)
    resumed_m.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["optim"])
    assert resumed.param_groups[0]["max_grad_norm"] == 0.5
    _train(resumed_m, resumed, STEPS, device, first_step=STEPS)

    for p, q in zip(straight_m.parameters(), resumed_m.parameters()):
        assert torch.equal(p, q)
        for key, value in straight.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


# --------------------------------------------------------------------------- optimizer protocol
def test_step_hooks_run_once_per_step_and_closure_is_evaluated(device):
    model = _mlp(device)
    opt = fastgd.Adam(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = _loss(model, 0, device)
        loss.backward()
        return loss

    for _ in range(3):
        loss = opt.step(closure)
    assert calls == ["pre", "post"] * 3
    assert loss.ndim == 0 and opt.state[model[0].weight]["step"].item() == 3


def test_deepcopy_and_pickle_keep_every_setting_and_continue_identically(device):
    model = _mlp(device)
    opt = fastgd.AdamW(model.parameters(), lr=3e-2, betas=(0.8, 0.95), eps=1e-6,
                       weight_decay=0.2, amsgrad=True, maximize=False, max_grad_norm=0.7)
    _train(model, opt, 2, device)
    model_copy, opt_copy = copy.deepcopy((model, opt))
    pickled = pickle.loads(pickle.dumps(opt))
    for other in (opt_copy, pickled):
        assert type(other) is fastgd.AdamW
        assert other.defaults == opt.defaults
        for a, b in zip(other.param_groups, opt.param_groups):
            assert {k: v for k, v in a.items() if k != "params"} == \
                   {k: v for k, v in b.items() if k != "params"}
    _train(model, opt, STEPS, device, first_step=2)
    _train(model_copy, opt_copy, STEPS, device, first_step=2)
    for p, q in zip(model.parameters(), model_copy.parameters()):
        assert torch.equal(p, q)


def test_add_param_group_later_with_its_own_hyperparameters(device):
    ours_p = _leaves([(11,), (3, 5)], torch.float32, device, seed=1)
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours = fastgd.Adam(ours_p[:1], lr=0.01)
    ref = torch.optim.Adam(ref_p[:1], lr=0.01, foreach=False)
    for step in range(6):
        if step == 3:
            ours.add_param_group({"params": ours_p[1:], "lr": 0.05, "amsgrad": True,
                                  "weight_decay": 0.1})
            ref.add_param_group({"params": ref_p[1:], "lr": 0.05, "amsgrad": True,
                                 "weight_decay": 0.1})
        _set_grads([ours_p, ref_p], step)
        ours.step()
        ref.step()
    assert ours.param_groups[1]["max_grad_norm"] is None
    _assert_state_same(ours, ref, torch.float32)


def test_step_without_any_gradient_changes_nothing(device):
    params = _leaves([(4,)], torch.float32, device, seed=2)
    opt = fastgd.AdamW(params, max_grad_norm=1.0)
    before = params[0].detach().clone()
    opt.step()
    assert torch.equal(params[0].detach(), before) and not opt.state[params[0]]
    assert opt.grad_norm is None


# --------------------------------------------------------------------------- argument errors
@pytest.mark.parametrize("kwargs, words", [
    # torch.optim.Adam's own wording, which code and test suites match on
    (dict(lr=-1.0), "^Invalid learning rate: -1.0"),
    (dict(lr=torch.tensor([0.1, 0.2])), "^Tensor lr must be 1-element"),
    (dict(eps=-1e-8), "^Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), "^Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "^Invalid beta parameter at index 1: -0.1"),
    (dict(betas=(torch.tensor(0.9), 0.99)), "^betas must be either both floats or both Tensors"),
    (dict(weight_decay=-0.1), "^Invalid weight_decay value: -0.1"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(max_grad_norm=float("inf")), "max_grad_norm"),
    (dict(max_grad_norm="1.0"), "max_grad_norm"),
    (dict(differentiable=True), "differentiable"),
    (dict(foreach=True, fused=True), "fused"),
])
def test_bad_arguments_raise_value_errors_naming_them(kwargs, words):
    with pytest.raises(ValueError, match=words):
        fastgd.AdamW([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_gradient_is_a_clear_error(device):
    emb = torch.nn.Embedding(10, 3, sparse=True).to(device)
    opt = fastgd.Adam(emb.parameters())
    emb(torch.tensor([1, 2], device=device)).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()


# --------------------------------------------------------------------------- PyTorch path
def test_torch_path_matches_torch_with_clipping_and_grad_scaler(device, monkeypatch):
    """Forced onto the PyTorch path, nothing launches a kernel and the results are torch's."""
    def no_kernels(*args, **kwargs):
        raise AssertionError("a kernel launched on the PyTorch path")

    monkeypatch.setattr(optim_launch, "launch_adam", no_kernels)
    monkeypatch.setattr(optim_launch, "launch_grad_sumsq", no_kernels)
    ours_m, ref_m = _mlp(device), _mlp(device)
    with fastgd.force_backend("torch"):
        ours = fastgd.AdamW(ours_m.parameters(), lr=2e-2, amsgrad=True, max_grad_norm=0.3)
        ref = torch.optim.AdamW(ref_m.parameters(), lr=2e-2, amsgrad=True, foreach=False)
        for step in range(STEPS):
            for model, opt in ((ours_m, ours), (ref_m, ref)):
                opt.zero_grad()
                (_loss(model, step, device) * 64.0).backward()
            torch.nn.utils.clip_grad_norm_(ref_m.parameters(), 0.3 * 64.0)
            found_inf = torch.tensor(float(step == 2), device=device)
            ours.step(grad_scale=torch.tensor(64.0, device=device), found_inf=found_inf)
            if step != 2:
                for p in ref_m.parameters():
                    if p.grad is not None:
                        p.grad.div_(64.0)
                ref.step()
    _assert_state_same(ours, ref, torch.float32)


# --------------------------------------------------------------------------- launches and tables
def test_tables_hold_each_value_in_the_column_the_kernel_reads(device):
    """The host fills the tables by column name; read back at the kernel's own constexpr
    columns, each holds what the kernel expects there."""
    lr = torch.tensor(0.25, device=device)
    params = _leaves([(3,), (2100,)], torch.float32, device, seed=5)
    opt = fastgd.AdamW([{"params": params[:1], "lr": 0.125, "betas": (0.5, 0.75), "eps": 1e-3,
                         "weight_decay": 0.0625, "amsgrad": True},
                        {"params": params[1:], "lr": lr, "maximize": True,
                         "max_grad_norm": 2.5}])
    _set_grads([params], 0)
    opt.step()
    cache = opt._launch_cache
    (bucket,) = cache.buckets.values()
    (groups,) = cache.group_tables.values()
    rows = bucket.tensor_table.cpu().reshape(len(params), -1).tolist()
    assert len(rows[0]) == adam_kernels.TENSOR_COLS.value
    col = {name: getattr(adam_kernels, name).value for name in dir(adam_kernels)
           if name.startswith(("T_", "G_", "FLAG_", "KIND_"))}
    for i, p in enumerate(params):
        state, row = opt.state[p], rows[i]
        assert row[col["T_PARAM"]] == p.data_ptr() and row[col["T_GRAD"]] == p.grad.data_ptr()
        assert row[col["T_EXP_AVG"]] == state["exp_avg"].data_ptr()
        assert row[col["T_EXP_AVG_SQ"]] == state["exp_avg_sq"].data_ptr()
        assert row[col["T_MAX_EXP_AVG_SQ"]] == (state["max_exp_avg_sq"].data_ptr() if i == 0
                                                else 0)
        assert row[col["T_STEP"]] == state["step"].data_ptr()
        assert row[col["T_NUMEL"]] == p.numel() and row[col["T_GROUP"]] == i
        assert row[col["T_NUM_BLOCKS"]] == -(-p.numel() // ADAM_BLOCK[torch.float32])
        assert row[col["T_FIRST_BLOCK"]] == (0 if i == 0 else 1)

    def as_float(bits):
        return struct.unpack("<d", struct.pack("<q", bits))[0]

    g0, g1 = (groups.rows[i * adam_kernels.GROUP_COLS.value:][:adam_kernels.GROUP_COLS.value]
              for i in range(2))
    assert g0[col["G_FLAGS"]] == col["FLAG_AMSGRAD"] | col["FLAG_DECOUPLED"]
    assert g1[col["G_FLAGS"]] == col["FLAG_MAXIMIZE"] | col["FLAG_DECOUPLED"] | col["FLAG_CLIP"]
    assert (as_float(g0[col["G_LR_VALUE"]]), g0[col["G_LR_KIND"]]) == (0.125, col["KIND_VALUE"])
    assert (g1[col["G_LR_ADDRESS"]], g1[col["G_LR_KIND"]]) == (lr.data_ptr(),
                                                               col["KIND_FP32_TENSOR"])
    assert as_float(g0[col["G_BETA1_VALUE"]]) == 0.5 and as_float(g0[col["G_BETA2_VALUE"]]) == 0.75
    assert as_float(g0[col["G_EPS"]]) == 1e-3
    assert as_float(g0[col["G_WEIGHT_DECAY"]]) == 0.0625
    assert as_float(g1[col["G_MAX_NORM"]]) == 2.5 and as_float(g0[col["G_MAX_NORM"]]) == 0.0


def test_one_launch_per_dtype_and_tables_reused_while_addresses_stay(device, monkeypatch):
    launches = []

    class Counting:  # records each launch of a @triton.jit kernel: kernel[grid](...)
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launches.append(self.kernel.__name__)
            return self.kernel[grid]

    for name in ("adam_kernel", "grad_sumsq_kernel"):
        monkeypatch.setattr(adam_kernels, name, Counting(getattr(adam_kernels, name)))
    params = (_leaves([(3,), (), (40,), (7, 2)], torch.float32, device, seed=3)
              + _leaves([(5,), (6,)], torch.float64, device, seed=4))
    opt = fastgd.AdamW([{"params": params[:3], "max_grad_norm": 1.0},
                        {"params": params[3:], "lr": 0.1, "max_grad_norm": 1.0}])
    _set_grads([params], 0)
    opt.step()
    # fp32 and fp64 buckets: one norm launch and one Adam launch each, whatever the tensor count
    assert sorted(launches) == ["adam_kernel"] * 2 + ["grad_sumsq_kernel"] * 2
    buckets = dict(opt._launch_cache.buckets)

    for p in params:  # same gradient tensors, new values: the same tables serve
        p.grad.mul_(0.5)
    opt.step()
    assert all(opt._launch_cache.buckets[k] is b for k, b in buckets.items())

    params[0].grad = None  # a parameter without gradient this step: the fp32 table changes
    params[2].grad = torch.randn(40, device=device)
    opt.step()
    fp32_key = next(k for k in buckets if k[1] == torch.float32)
    assert opt._launch_cache.buckets[fp32_key] is not buckets[fp32_key]
    assert opt.state[params[0]]["step"].item() == 2 and opt.state[params[1]]["step"].item() == 3


def test_launch_tables_are_not_state(device):
    """The cache holds addresses and values of this optimizer's tensors: pickles and deep copies
    leave it behind, new or reloaded param groups drop it, and the next step builds a new one."""
    params = _leaves([(5,), (3,)], torch.float32, device, seed=6)
    opt = fastgd.AdamW(params[:1], max_grad_norm=1.0)
    assert opt._launch_cache is None
    _set_grads([params], 0)
    opt.step()
    cache = opt._launch_cache
    assert isinstance(cache, LaunchCache)
    (key,) = cache.buckets
    assert key == (params[0].device, torch.float32)
    assert list(cache.group_tables) == list(cache.norm_scratch) == [params[0].device]
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert copied._launch_cache is None and "_launch_cache" not in copied.__getstate__()
    opt.step()
    assert opt._launch_cache is cache  # same tensors: kept (what it keeps is tested above)

    opt.load_state_dict(opt.state_dict())
    assert opt._launch_cache is None
    opt.step()
    assert opt._launch_cache is not None and opt._launch_cache is not cache
    opt.add_param_group({"params": params[1:]})
    assert opt._launch_cache is None
    opt.step()
    (bucket,) = opt._launch_cache.buckets.values()
    assert bucket.groups == frozenset({0, 1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only: host syncs, CUDA graphs")
def test_cuda_step_has_no_host_sync_and_graph_captures(device):
    model = _mlp(device)
    opt = fastgd.AdamW(model.parameters(), lr=torch.tensor(1e-2, device=device),
                       max_grad_norm=1.0, capturable=True)
    _train(model, opt, 2, device)  # tables built, state created
    scaler_state = (torch.tensor(2.0, device=device), torch.tensor(0.0, device=device))
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step(grad_scale=scaler_state[0], found_inf=scaler_state[1])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    reference = copy.deepcopy((model, opt))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(3):
        graph.replay()
        reference[1].step()
    for p, q in zip(model.parameters(), reference[0].parameters()):
        assert torch.equal(p, q)


def test_state_dict_has_torch_layout_without_clipping():
    # DCP's loader wants the checkpoint to hold every key of the destination's state dict: a
    # run without clipping must have torch.optim.AdamW's exact keys for checkpoints to move.
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    ours, theirs = fastgd.AdamW(model.parameters()), torch.optim.AdamW(model.parameters())
    for opt in (ours, theirs):
        opt.step()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert set(ours_sd["param_groups"][0]) == set(theirs_sd["param_groups"][0])
    assert set(ours_sd["state"][0]) == set(theirs_sd["state"][0])
    # with clipping the key is kept, and a state dict without it keeps the optimizer's own
    clipped = fastgd.AdamW(model.parameters(), max_grad_norm=1.0)
    assert clipped.state_dict()["param_groups"][0]["max_grad_norm"] == 1.0
    clipped.load_state_dict(theirs_sd)
    assert clipped.param_groups[0]["max_grad_norm"] == 1.0
    assert "max_grad_norm" in ours.param_groups[0]  # the live groups keep it


def test_torch_path_guard_reruns_only_when_a_layout_changes(monkeypatch):
    # The PyTorch path checks its tensors as the kernels' tables do: again only after an
    # address or layout moved, so its host time does not pay the checks every step.
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    opt = fastgd.AdamW(model.parameters())
    checked = []
    real = optim_launch.check_memory
    monkeypatch.setattr(optim_launch, "check_memory",
                        lambda name, *args, **kwargs: (checked.append(name),
                                                       real(name, *args, **kwargs)))
    with fastgd.force_backend("torch"):
        opt.step()
        assert len(checked) == 2  # weight and bias
        opt.step()
        assert len(checked) == 2, "nothing moved: no new checks"
        model.weight.grad = model.weight.grad.clone()  # a new gradient tensor: a new address
        opt.step()
        assert len(checked) == 4  # the group is checked again
        opt.state[model.bias]["exp_avg"] = torch.zeros(5)  # replaced, and wrong
        with pytest.raises(ValueError, match="exp_avg"):
            opt.step()
