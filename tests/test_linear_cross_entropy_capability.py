"""The mixed-precision GEMM (16-bit operands accumulated into the fp32 d_weight, no upcast copy)
as linear_cross_entropy_ops decides it: once per device type, from the dispatcher, never from a
failed call; the forward and the backward read the one answer, through plan_chunks, and size
their chunks the same way; the gradient is right with and without it."""
import pytest
import torch

from fastgd import launch_config
from fastgd.losses import linear_cross_entropy_ops as ops
from linear_cross_entropy_cases import check_against_materialised, make_inputs

# 37 rows of 300 bf16 logits. The budget fits 9 rows when each logit also needs an fp32 upcast
# (2 + 4 bytes) and 27 when the mixed GEMM spares it (2 bytes), i.e. chunks of 8 and 16 rows
# (powers of two): the two answers give different chunk sizes, and several chunks each.
N, H, V = 37, 16, 300
BUDGET = V * 54


def test_capability_matches_what_torch_runs(device):
    # Check the dispatcher's answer against a real call of the GEMM it names.
    acc = torch.zeros(3, 5, device=device)
    a = torch.randn(3, 4, dtype=torch.bfloat16, device=device)
    b = torch.randn(4, 5, dtype=torch.bfloat16, device=device)
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        runs = True
    except (RuntimeError, TypeError, NotImplementedError):
        runs = False
    assert ops.mixed_gemm_supported(device) is runs
    assert ops.mixed_gemm_supported("meta") is False  # no data, never a GEMM to run


def test_chunk_size_follows_the_capability(monkeypatch):
    # A 16-bit chunk's working set depends on the mixed GEMM: without it the gradient is upcast.
    hidden = torch.empty(1 << 20, 64, dtype=torch.bfloat16, device="meta")
    weight = torch.empty(128256, 64, dtype=torch.bfloat16, device="meta")
    monkeypatch.setattr(ops.backend, "backend_for", lambda t: "triton")
    monkeypatch.setattr(ops.backend, "uses_kernels", lambda t: True)
    plans = {}
    for supported in (False, True):
        monkeypatch.setattr(ops, "mixed_gemm_supported", lambda device_type, s=supported: s)
        plans[supported] = ops.plan_chunks(hidden, weight, 0)
    # 2 bytes a logit with the mixed GEMM, 2 + 4 without: the budget holds 3x the rows
    assert plans[True] == (ops.linear_cross_entropy_chunk(1 << 20, 128256, 2), True)
    assert plans[False] == (ops.linear_cross_entropy_chunk(1 << 20, 128256, 6), False)
    assert plans[True].rows > plans[False].rows


@pytest.mark.parametrize("mixed_gemm", [False, True], ids=["upcast", "mixed-gemm"])
def test_forward_and_backward_follow_one_answer(mixed_gemm, device, monkeypatch):
    really_supported = ops.uses_mixed_gemm(torch.empty(0, device=device))
    if mixed_gemm and device == "cuda" and not really_supported:
        pytest.skip("this torch has no mixed GEMM for CUDA")
    monkeypatch.setattr(launch_config, "LCE_CHUNK_BUDGET_BYTES", BUDGET)
    monkeypatch.setattr(ops, "uses_mixed_gemm", lambda like: mixed_gemm)
    walked = {"forward": [], "backward": [], "accumulate": []}  # rows of each chunk; GEMM used

    def forward_spy(logits, *args):
        walked["forward"].append(logits.shape[0])
        return rows_forward(logits, *args)

    def backward_spy(grad, logits, *args):
        walked["backward"].append(logits.shape[0])
        return rows_backward_into(grad, logits, *args)

    def accumulate_spy(acc, a, b, use_mixed):
        walked["accumulate"].append(use_mixed)
        # Off CUDA there is no mixed GEMM to run: the path taken is recorded, the sum upcast.
        accumulate(acc, a, b, use_mixed and really_supported)

    rows_forward, rows_backward_into = ops.rows_forward, ops.rows_backward_into
    accumulate = ops._accumulate_product
    monkeypatch.setattr(ops, "rows_forward", forward_spy)
    monkeypatch.setattr(ops, "rows_backward_into", backward_spy)
    monkeypatch.setattr(ops, "_accumulate_product", accumulate_spy)
    hidden, weight, bias, target, _ = make_inputs(N, H, V, torch.bfloat16, device, seed=3)
    check_against_materialised(hidden, weight, target, bias, torch.bfloat16)  # chunk from budget

    extra = 0 if mixed_gemm else torch.float32.itemsize
    if not ops.backend.uses_kernels(hidden):
        extra += ops._TORCH_PATH_FP32_COPIES * torch.float32.itemsize
    rows = launch_config.linear_cross_entropy_chunk(N, V, 2 + extra)
    if ops.backend.uses_kernels(hidden):
        assert rows == (16 if mixed_gemm else 8)
    chunks = [rows] * (N // rows) + ([N % rows] if N % rows else [])
    assert walked == {"forward": chunks, "backward": chunks,
                      "accumulate": [mixed_gemm] * len(chunks)}


def test_a_failing_gemm_raises_and_changes_no_decision(device, monkeypatch):
    # The old code caught any error of the mixed GEMM and flipped a process-wide flag, so later
    # calls (and the rest of that backward) sized their chunks differently. Now an error is the
    # caller's, and the next call plans exactly as before.
    monkeypatch.setattr(launch_config, "LCE_CHUNK_BUDGET_BYTES", BUDGET)
    monkeypatch.setattr(ops, "uses_mixed_gemm", lambda like: True)
    real_addmm = torch.addmm

    def failing_addmm(*args, **kwargs):
        if "out_dtype" in kwargs:
            raise RuntimeError("mixed GEMM refused")
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", failing_addmm)
    hidden, weight, bias, target, _ = make_inputs(N, H, V, torch.bfloat16, device, seed=3)
    before = ops.plan_chunks(hidden, weight, 0)
    leaf = weight.clone().requires_grad_()
    loss = ops.linear_cross_entropy_rows(hidden, leaf, bias, target, None, -100, 0.0, 1.0, 0.0,
                                         0)[0].sum()
    with pytest.raises(RuntimeError, match="mixed GEMM refused"):
        loss.backward()
    assert ops.plan_chunks(hidden, weight, 0) == before == (before.rows, True)
