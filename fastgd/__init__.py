"""fastgd: Triton kernels for the two memory-bound ends of an LLM training step -- the
cross-entropy loss over a large vocabulary and the Adam/AdamW update."""
from . import backend
from .backend import force_backend
from .cross_entropy import CrossEntropyLoss, cross_entropy
from .linear_cross_entropy import LinearCrossEntropyLoss, linear_cross_entropy
from .optim import Adam, AdamW

__version__ = "0.1.0"

__all__ = ["Adam", "AdamW", "CrossEntropyLoss", "LinearCrossEntropyLoss", "backend", "cross_entropy",
           "force_backend", "linear_cross_entropy"]
