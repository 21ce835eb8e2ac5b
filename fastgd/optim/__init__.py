"""Optimizers: Adam and AdamW as one fused multi-tensor Triton launch per (device, dtype).

``adam`` is the ``torch.optim.Optimizer`` users see, ``launch`` builds the launch tables and
calls the kernels, ``torch_path`` is the PyTorch path with the same semantics.
"""
from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
