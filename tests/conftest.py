"""Test set-up: run the real Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be in the environment before anything imports triton (``import torch``
does not; ``import torch._dynamo`` does), so this happens at the top of the first conftest.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def device() -> str:
    """Where the tests' tensors live: the GPU when there is one (compiled kernels), else the CPU
    (interpreted kernels)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
