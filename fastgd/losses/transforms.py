"""What the losses say to autograd's higher-order uses they do not support, instead of torch's
generic messages about custom ops:

* ``torch.func.grad`` / ``jacrev`` / ``vjp`` (functorch's gradient transforms): torch's custom
  ops run their autograd through an ``autograd.Function`` these transforms cannot enter. The
  loss refuses at the call, naming what works (``loss.backward()`` / ``torch.autograd.grad``;
  ``torch.vmap`` alone works, through torch's batching fallback).
* A second derivative (double backward, ``create_graph=True`` then a gradient of the gradient):
  the backward kernels have no derivative of their own. The first gradient is computed as usual;
  differentiating it raises.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InvalidTypeError


def _is_grad_tracking(t) -> bool:
    """Whether ``t`` is a tensor wrapped by a functorch gradient transform."""
    check = getattr(torch._C._functorch, "is_gradtrackingtensor", None)
    return check is not None and isinstance(t, Tensor) and check(t)


def refuse_gradient_transforms(loss: str, *tensors) -> None:
    if torch.compiler.is_compiling():  # the check is a C function the compiler cannot trace
        return
    if any(_is_grad_tracking(t) for t in tensors):
        raise InvalidTypeError(
            f"{loss} does not run under torch.func's gradient transforms (grad, jacrev, vjp, "
            f"hessian): its kernels are custom ops with their own backward. Compute gradients "
            f"with loss.backward() or torch.autograd.grad, or use torch's loss inside the "
            f"transform")


def refuse_second_derivative(backward_op, loss: str) -> None:
    """Give ``backward_op`` (a custom op computing a first derivative) an autograd formula that
    raises a clear error when something differentiates through it."""

    def setup_context(ctx, inputs, output) -> None:
        pass

    def backward(ctx, *grads):
        raise InvalidTypeError(
            f"{loss} has no second derivative (double backward, or a gradient of a gradient "
            f"taken with create_graph=True): its backward is a kernel without a derivative of "
            f"its own. Use torch's loss where second derivatives are needed")

    backward_op.register_autograd(backward, setup_context=setup_context)
