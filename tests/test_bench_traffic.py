"""The bytes and FLOPs each benchmark case must move, against hand-counted numbers: every GB/s
and % of copy the benchmarks print is one of these over a time."""
import pytest

from bench import traffic


def test_cross_entropy_bytes_llama3_bf16():
    n, v = 4096, 128256
    logits = n * v * 2  # bf16
    per_row = n * (8 + 4)  # int64 target + one fp32 value per row
    assert traffic.cross_entropy_bytes(n, v, 2, "fwd") == logits + per_row == 1_050_722_304
    # backward and the pair: read the logits once, write the gradient once
    assert traffic.cross_entropy_bytes(n, v, 2, "bwd") == 2 * logits + per_row
    assert traffic.cross_entropy_bytes(n, v, 2, "fwd+bwd") == 2_101_395_456


def test_cross_entropy_bytes_scale_with_itemsize():
    assert (traffic.cross_entropy_bytes(16384, 32000, 4, "fwd")
            - traffic.cross_entropy_bytes(16384, 32000, 2, "fwd")) == 16384 * 32000 * 2


def test_adam_bytes():
    # 1e9 fp32 params: read p, g, m, v and write p, m, v = 28 GB; clipping reads g again
    assert traffic.adam_bytes(10 ** 9, 4, clip=False) == 28 * 10 ** 9
    assert traffic.adam_bytes(10 ** 9, 4, clip=True) == 32 * 10 ** 9
    assert traffic.adam_bytes(1000, 2, clip=False) == 14_000


def test_linear_cross_entropy_flops_and_bytes():
    n, h, v = 4096, 4096, 128256
    assert traffic.linear_cross_entropy_flops(n, h, v, "fwd") == 2 * n * h * v == 4_303_557_230_592
    assert traffic.linear_cross_entropy_flops(n, h, v, "fwd+bwd") == 6 * n * h * v
    inputs = (n + v) * h * 2
    assert traffic.linear_cross_entropy_bytes(n, h, v, 2, "fwd") == inputs + n * 12
    assert traffic.linear_cross_entropy_bytes(n, h, v, 2, "fwd+bwd") == 2 * inputs + n * 12


def test_copy_bytes_count_read_and_write():
    assert traffic.copy_bytes(1 << 28, 4) == 2 << 30


@pytest.mark.parametrize("fn, args", [
    (traffic.cross_entropy_bytes, (8, 8, 4, "backward")),
    (traffic.linear_cross_entropy_flops, (8, 8, 8, "bwd")),
    (traffic.linear_cross_entropy_bytes, (8, 8, 8, 4, "both")),
])
def test_unknown_mode_is_refused(fn, args):
    with pytest.raises(ValueError, match="mode="):
        fn(*args)
