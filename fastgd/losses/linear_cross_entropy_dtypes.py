"""Which dtype the LM head's matmul runs in, and torch's ``options`` read as chunking.

The rule, one place (``linear_cross_entropy``'s docstring states it to users):

* under ``torch.autocast`` for the input's device type, ``F.linear`` casts its operands to the
  autocast dtype (``torch.get_autocast_dtype``); so does this -- ``input``, ``linear_weight`` and
  ``linear_bias`` -- unless the input is float64 (autocast leaves float64 alone);
* outside autocast, a weight or bias of another float dtype than ``input`` is cast to
  ``input``'s (``F.linear`` raises instead): the activations decide, as they do in the usual
  mixed case of bfloat16 activations beside a float32 LM head.

The casts are ordinary differentiable ``.to()`` calls: each gradient comes back in its input's
dtype (a float32 weight gets a float32 gradient, rounded from the matmul dtype's, exactly as
autocast + ``F.linear`` gives). Non-tensor arguments pass through for the shape checks to name.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import InvalidTypeError

_CASTABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def autocast_operands(hidden, weight, bias) -> tuple:
    if not isinstance(hidden, Tensor) or hidden.dtype not in _CASTABLE:
        return hidden, weight, bias
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and hidden.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = hidden.dtype
    return tuple(_cast(t, dtype) for t in (hidden, weight, bias))


def _cast(t, dtype: torch.dtype):
    if isinstance(t, Tensor) and t.dtype in _CASTABLE and t.dtype != dtype:
        return t.to(dtype)
    return t


def chunk_size_of(options) -> Optional[int]:
    """torch's ``LinearCrossEntropyOptions``: its ``batch_chunk_size`` is a row count per chunk,
    which is what ``chunk_size`` means here; its other fields (accumulation policy, chunking
    method, retain-graph) choose among torch's own strategies and have no counterpart."""
    if options is None:
        return None
    if not hasattr(options, "batch_chunk_size"):
        raise InvalidTypeError(f"options must be a torch.nn.LinearCrossEntropyOptions or None, "
                               f"got {type(options).__name__}")
    return options.batch_chunk_size
