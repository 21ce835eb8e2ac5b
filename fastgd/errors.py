"""fastgd's exception types, chosen so that code written against torch keeps working.

torch raises ``RuntimeError`` for many mistakes that Python code (and fastgd's own earlier
releases) report as ``ValueError``/``TypeError``, and ``IndexError`` for an out-of-range target.
Each type here derives from both, so ``except RuntimeError`` (torch's habit) and
``except ValueError`` (Python's) both catch it.
"""
from __future__ import annotations


class InvalidValueError(ValueError, RuntimeError):
    """A tensor or option with the wrong shape, size, device, layout or value."""


class InvalidTypeError(TypeError, RuntimeError):
    """A tensor or option of the wrong type or dtype."""


class TargetOutOfBoundsError(IndexError, ValueError):
    """A class index outside ``[0, C)`` that is not ``ignore_index`` (torch: ``IndexError``)."""


class UnsupportedDtypeError(TypeError, NotImplementedError):
    """A dtype fastgd's kernels do not handle (torch: ``NotImplementedError``, e.g. integer
    logits)."""
