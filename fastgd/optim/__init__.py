"""Optimizers: Adam and AdamW as one fused multi-tensor Triton launch per (device, dtype).

``adam`` is the ``torch.optim.Optimizer`` users see; ``launch_cache`` runs one step and keeps
its launch tables between steps; ``launch`` builds the tables and calls the kernels;
``torch_path`` is the PyTorch path with the same semantics; ``sharding`` unwraps DTensor
parameters (FSDP2, tensor parallel) to their local shards and sums the clipping norm across
ranks.
"""
from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
