"""Packaging: ``kernels/`` is importable only as ``fastgd.kernels``, and fastgd imports and runs
its PyTorch path without the interpreter."""
import os
import subprocess
import sys
import textwrap


def _run_elsewhere(code: str, **env_changes) -> subprocess.CompletedProcess:
    # From another directory, so the checkout itself is not on sys.path: what a user sees.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd="/", env=env, timeout=300)


def test_kernels_install_as_fastgd_kernels_only():
    proc = _run_elsewhere("""
        import importlib.util, fastgd.kernels.cross_entropy
        assert importlib.util.find_spec("kernels") is None, "a top-level kernels module exists"
        print("ok")
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_cpu_without_interpreter_uses_torch_path_with_same_result():
    proc = _run_elsewhere("""
        import torch, torch.nn.functional as F, fastgd
        x = torch.randn(4, 33, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([1, 5, -100, 32])
        assert fastgd.backend.backend_for(x) == "torch"
        loss = fastgd.cross_entropy(x, t, label_smoothing=0.1)
        loss.backward()
        y = x.detach().clone().requires_grad_()
        F.cross_entropy(y, t, label_smoothing=0.1).backward()
        torch.testing.assert_close(loss, F.cross_entropy(y.detach(), t, label_smoothing=0.1))
        torch.testing.assert_close(x.grad, y.grad)
        print("ok")
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
