"""The one tolerance table of the test suite, and the helpers that apply it.

Accuracy rule (from flash-attention's tests): with ``truth`` computed in float64,

    max|ours - truth|  <=  RATIO * max|torch_same_dtype - truth|  +  ATOL[dtype] * max|truth|

i.e. we may be at most twice as far from the exact answer as PyTorch itself is in the same dtype,
plus a floor of about half a unit in the last place of the dtype (relative to the largest value),
so that a reference that happens to be exact does not demand the impossible.
"""
from __future__ import annotations

import torch

RATIO = 2.0

ATOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.float16: 5e-4,  # ~half an fp16 ulp at magnitude 1
    torch.bfloat16: 4e-3,  # ~half a bf16 ulp at magnitude 1
}

# Tight comparisons where both sides compute in the same precision (e.g. fp32 optimizer state
# against torch.optim in fp32): relative tolerance, absolute tolerance.
SAME_PRECISION = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (1e-6, 1e-7),
    torch.float16: (2e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}

# Whole training runs (the demo's fastgd stack beside torch's, or an accumulated batch beside one
# big batch): the largest difference between two loss curves (nats, losses of order 1-5) after a
# few dozen steps. Rounding differences of ~1e-7 per step are amplified by Adam's division by
# sqrt(v) for small gradients; a wrong normaliser, clip or smoothing term moves the curves by
# 1e-2 or more.
TRAINING_CURVE_ATOL = {torch.float32: 1e-4}


def _worst(diff: torch.Tensor, k: int = 5) -> str:
    flat = diff.flatten()
    k = min(k, flat.numel())
    values, idx = flat.topk(k)
    return ", ".join(f"[{i}]={v:.3e}" for v, i in zip(values.tolist(), idx.tolist()))


def assert_accurate(ours, same_dtype, truth, dtype: torch.dtype, what: str = "value") -> None:
    """Apply the accuracy rule above. ``same_dtype`` is PyTorch's answer computed in ``dtype``."""
    truth = truth.detach().double().cpu()
    ours = ours.detach().double().cpu()
    same_dtype = same_dtype.detach().double().cpu()
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    bad_nan = ours.isnan() & ~truth.isnan()
    assert not bad_nan.any(), f"{what}: {int(bad_nan.sum())} NaNs where the truth is finite"
    finite = truth.isfinite()
    if finite.sum() == 0:
        return
    err_ours = (ours - truth).abs()[finite]
    err_torch = (same_dtype - truth).abs()[finite]
    scale = truth[finite].abs().max().item()
    bound = RATIO * err_torch.max().item() + ATOL[dtype] * scale
    worst = err_ours.max().item()
    assert worst <= bound, (
        f"{what} ({dtype}): max error {worst:.3e} > bound {bound:.3e} "
        f"(torch's own error {err_torch.max().item():.3e}); worst: {_worst(err_ours)}"
    )


def assert_same(ours, expected, dtype: torch.dtype, what: str = "value") -> None:
    """Same-precision comparison with the SAME_PRECISION tolerances of ``dtype``."""
    rtol, atol = SAME_PRECISION[dtype]
    torch.testing.assert_close(ours, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")

# Vocabulary-parallel losses against the same loss on the unsharded logits: the same math, but the
# rows' logsumexp and sums are combined from per-rank parts (a different order of summation), so
# a few float32 ulps apart; a wrong or missing term is off by far more.
VOCAB_PARALLEL = {
    torch.float64: (1e-12, 1e-14),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
}

# A 5-step Trainer run under bf16 autocast with fastgd's LM-head loss and AdamW, beside the same
# run with transformers' loss and torch's AdamW (tests/test_transformers.py): the largest
# difference between the logged losses (nats, here 10-14). Both compute the head in bf16 but
# round in different places (fastgd sums d_weight in fp32, the bf16 GEMM behind transformers'
# F.linear rounds it to bf16: ~2^-9 relative), which moved the curve by 1e-6 to 2e-6 when
# measured on CPU; 1e-3 leaves room for other CPUs' and GPUs' GEMMs. A wrong normaliser under
# gradient accumulation doubles or halves the loss.
AUTOCAST_TRAINING_CURVE_ATOL = {torch.bfloat16: 1e-3}
