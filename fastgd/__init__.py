"""fastgd: Triton kernels for the two memory-bound ends of an LLM training step -- the
cross-entropy loss over a large vocabulary and the Adam/AdamW update.

The package is layered: ``backend``, ``guard``, ``dtypes``, ``launch_config`` and ``errors`` are
the ground floor every feature reads; ``losses`` and ``optim`` build on them; ``kernels`` holds
the pure ``@triton.jit`` code; ``demo`` is the training demo behind the ``fastgd`` command.
"""
from . import backend
from ._version import __version__
from .backend import force_backend
from .losses import CrossEntropyLoss, LinearCrossEntropyLoss, cross_entropy, linear_cross_entropy
from .optim import Adam, AdamW

__all__ = ["Adam", "AdamW", "CrossEntropyLoss", "LinearCrossEntropyLoss", "backend", "cross_entropy",
           "force_backend", "linear_cross_entropy", "__version__"]
