"""The bytes and FLOPs each benchmark case must move -- every GB/s and % of copy the benchmarks
print is one of these over a time -- checked against what the case's own tensors hold after a
real call (``nbytes`` of its inputs, outputs, gradients and optimizer state), against the FLOPs
torch's FlopCounterMode counts in the baseline, and against small examples worked by hand."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fastgd
from bench import traffic
from bench.suites import cross_entropy as ce_suite
from bench.suites import linear_cross_entropy as lce_suite
from bench.suites import optimizer as optimizer_suite

DTYPES = ("fp32", "bf16")


def test_cross_entropy_bytes_worked_by_hand():
    # N=2, V=3, fp32: logits 2*3*4 = 24 B, int64 targets 2*8 = 16 B, one fp32 value per row
    # 2*4 = 8 B. fwd: 24 + 16 + 8 = 48. bwd (and fwd+bwd): the gradient too, 48 + 24 = 72.
    assert traffic.cross_entropy_bytes(2, 3, 4, "fwd") == 48
    assert traffic.cross_entropy_bytes(2, 3, 4, "bwd") == 72
    assert traffic.cross_entropy_bytes(2, 3, 4, "fwd+bwd") == 72
    # Llama-3 at 4096 tokens, bf16: 4096*128256*2 = 1,050,673,152 B of logits + 4096*12 per row
    assert traffic.cross_entropy_bytes(4096, 128256, 2, "fwd") == 1_050_722_304
    assert traffic.cross_entropy_bytes(4096, 128256, 2, "fwd+bwd") == 2_101_395_456


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", traffic.CE_MODES)
def test_cross_entropy_case_counts_the_tensors_it_moves(mode, dtype):
    n_rows, n_classes = 16, 1000
    case = ce_suite.make_case("fastgd", mode, dtype, n_rows, n_classes, "cpu")
    x, target, _ = ce_suite.inputs(n_rows, n_classes, ce_suite.TORCH_DTYPES[dtype], "cpu", "fwd",
                                   None)
    with fastgd.force_backend("torch"):
        loss, lse = fastgd.cross_entropy(x, target, reduction="none", return_lse=True)
        loss.sum().backward()
    # the forward reads logits and targets and writes a per-row value (the lse its backward
    # reads); the backward writes the gradient
    forward = x.nbytes + target.nbytes + lse.nbytes
    counted = forward if mode == "fwd" else forward + x.grad.nbytes
    assert case.nbytes == counted


def test_adam_bytes_worked_by_hand():
    # 1e9 fp32 parameters: read p, g, m, v and write p, m, v = 7 * 4 GB; clipping reads g again
    assert traffic.adam_bytes(10 ** 9, 4, clip=False) == 28 * 10 ** 9
    assert traffic.adam_bytes(10 ** 9, 4, clip=True) == 32 * 10 ** 9


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", optimizer_suite.MODES)
def test_adam_case_counts_the_state_torch_keeps(mode, dtype):
    set_name, shapes, _ = optimizer_suite.PARAMETER_SETS["tiny"][0]
    case = optimizer_suite.make_case("torch foreach", mode, dtype, set_name, shapes, "cpu")
    params = optimizer_suite.parameters(shapes, optimizer_suite.TORCH_DTYPES[dtype], "cpu")
    opt = torch.optim.AdamW(params, foreach=True)
    opt.step()
    weights = sum(p.nbytes for p in params)
    grads = sum(p.grad.nbytes for p in params)
    moments = sum(opt.state[p][k].nbytes for p in params for k in ("exp_avg", "exp_avg_sq"))
    # read weights, gradients and moments; write weights and moments; clipping reads the
    # gradients once more (their norm is needed before any update)
    counted = 2 * weights + grads + 2 * moments + (grads if mode == "step+clip" else 0)
    assert case.nbytes == counted


@pytest.mark.parametrize("mode", lce_suite.MODES)
def test_linear_cross_entropy_flops_are_what_torch_counts(mode):
    n_rows, hidden, n_classes = 16, 32, 500
    case = lce_suite.make_case("torch", mode, "fp32", n_rows, hidden, n_classes, "cpu")
    h, w, target = lce_suite.inputs(n_rows, hidden, n_classes, torch.float32, "cpu")
    with FlopCounterMode(display=False) as counter:
        loss = lce_suite.materialised_loss(h, w, target)
        if mode == "fwd+bwd":
            loss.backward()
    assert case.flops == counter.get_total_flops()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", lce_suite.MODES)
def test_linear_cross_entropy_case_counts_the_tensors_it_moves(mode, dtype):
    n_rows, hidden, n_classes = 16, 32, 500
    case = lce_suite.make_case("fastgd", mode, dtype, n_rows, hidden, n_classes, "cpu")
    h, w, target = lce_suite.inputs(n_rows, hidden, n_classes, lce_suite.TORCH_DTYPES[dtype],
                                    "cpu")
    with fastgd.force_backend("torch"):
        loss, lse = fastgd.linear_cross_entropy(h, w, target, reduction="none", return_lse=True)
        loss.sum().backward()
    forward = h.nbytes + w.nbytes + target.nbytes + lse.nbytes
    counted = forward if mode == "fwd" else forward + h.grad.nbytes + w.grad.nbytes
    assert case.nbytes == counted


def test_copy_bytes_count_read_and_write():
    assert traffic.copy_bytes(1 << 28, 4) == 2 << 30  # 1 GiB of fp32 read, 1 GiB written


@pytest.mark.parametrize("fn, args", [
    (traffic.cross_entropy_bytes, (8, 8, 4, "backward")),
    (traffic.linear_cross_entropy_flops, (8, 8, 8, "bwd")),
    (traffic.linear_cross_entropy_bytes, (8, 8, 8, 4, "both")),
])
def test_unknown_mode_is_refused(fn, args):
    with pytest.raises(ValueError, match="mode="):
        fn(*args)
