"""int64 addressing: element offsets past 2**31 (N*V >= 2**31).

In a subprocess, so an out-of-bounds access (a segfault in the interpreter) fails this test
instead of killing the run. On CPU the rows are a strided view of a 4 GiB allocation whose
untouched pages are never made resident: row 2 starts at element 2**31, so ``row * stride``
overflows int32 unless the kernels widen it. On CUDA a contiguous (16385, 131072) bf16 tensor
(N*V = 2**31 + 2**17) is used as well."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.nn.functional as F
    import fastgd
    layout, device = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    if layout == "strided":
        n, v, stride = 3, 1000, 2 ** 30
        storage = torch.empty(stride * (n - 1) + v, dtype=torch.bfloat16, device=device)
        x = storage.as_strided((n, v), (stride, 1))
        x.copy_(torch.randn(n, v, device=device))
    else:
        n, v = 16385, 131072
        x = torch.randn(n, v, device=device, dtype=torch.bfloat16)
    target = torch.randint(0, v, (n,), device=device)
    rows = [0, n // 2, n - 1]  # the last row lies past element 2**31
    expected_loss = F.cross_entropy(x[rows].double(), target[rows], reduction="none")
    xg = x[rows].double().requires_grad_()
    F.cross_entropy(xg, target[rows], reduction="sum").backward()

    loss = fastgd.cross_entropy(x, target, reduction="none")
    torch.testing.assert_close(loss[rows].double(), expected_loss, rtol=1e-5, atol=1e-5)
    # In place: the gradient is written back through the same large offsets.
    y = x.requires_grad_() if layout == "strided" else (x.requires_grad_() * 1.0)
    fastgd.cross_entropy(y, target, reduction="sum", inplace_backward=True).backward()
    grad = y.detach()[rows].double()
    torch.testing.assert_close(grad, xg.grad, rtol=2 ** -7, atol=1e-6)
    print("ok", layout)
""")


def _layouts():
    layouts = [("strided", "cpu")]
    if torch.cuda.is_available():
        layouts = [("strided", "cuda"), ("contiguous", "cuda")]
    return layouts


@pytest.mark.slow
@pytest.mark.parametrize("layout,device", _layouts())
def test_offsets_past_2_31(layout, device):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, layout, device], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert f"ok {layout}" in proc.stdout
