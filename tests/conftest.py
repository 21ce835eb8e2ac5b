"""Test set-up: run the real Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be in the environment before anything imports triton (``import torch``
does not; ``import torch._dynamo`` does), so this happens at the top of the first conftest.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Fuzz tests (tests/test_fuzz.py): a fixed seed and no deadline (interpreted kernels are slow and
# their speed varies), so a CI run is repeatable. Each test sets its own bounded max_examples;
# the long profile multiplies the search for a run by hand.
settings.register_profile("fastgd", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("fastgd-long", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fastgd"))


@pytest.fixture(scope="session")
def device() -> str:
    """Where the tests' tensors live: the GPU when there is one (compiled kernels), else the CPU
    (interpreted kernels)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
