"""A kernel launch described as data before it runs.

Each launcher builds its launch with one function returning a :class:`KernelCall` -- the grid,
every kernel parameter by name (constexprs included) and the warp count -- and runs it with
:meth:`KernelCall.launch`. The static report (``bench/aot.py``, a tool of the source tree that
fastgd never imports) calls the same builders with meta tensors and compiles what they describe,
so the arguments a kernel gets are written once.
"""
from __future__ import annotations

from typing import Any, NamedTuple


class KernelCall(NamedTuple):
    kernel: Any  # the @triton.jit function
    grid: tuple  # programs per grid axis
    args: dict  # kernel parameter name -> tensor, int, float or constexpr value
    num_warps: int

    def launch(self) -> None:
        self.kernel[self.grid](**self.args, num_warps=self.num_warps)
