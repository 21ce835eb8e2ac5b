"""Losses: cross-entropy over a large vocabulary, and the LM head's linear cross-entropy.

``cross_entropy`` and ``linear_cross_entropy`` are the autograd functions and modules users see;
``cross_entropy_ops`` is the row op (kernel or PyTorch path) both build on, ``checks`` the
argument validation both share.
"""
from .cross_entropy import CrossEntropyLoss, cross_entropy
from .linear_cross_entropy import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "cross_entropy", "LinearCrossEntropyLoss", "linear_cross_entropy"]
