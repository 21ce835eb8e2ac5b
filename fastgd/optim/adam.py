"""``fastgd.Adam`` and ``fastgd.AdamW``: torch.optim's Adam/AdamW with the whole update in one
Triton launch per (device, dtype), optional clipping by the global gradient norm fused into it,
and GradScaler support decided on the device. No host sync in ``step()``.

Same arguments, defaults, state layout (``step`` a float32 tensor on the parameter's device,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) and state_dict as torch's, so checkpoints move
both ways. On the CPU without the Triton interpreter, torch's own functional Adam runs on the same
state (fastgd.optim.torch_path).

Clipping (``max_grad_norm``, ours): the norm is the L2 norm over the gradients of every param
group whose ``max_grad_norm`` is set (with every group set -- the usual case -- all gradients of
the optimizer, as ``clip_grad_norm_(model.parameters())``); each such group scales its gradients
by ``min(1, its max_grad_norm / (norm + 1e-6))``. With a GradScaler it is the norm of the
unscaled gradients. The norm of the last step is ``optimizer.grad_norm`` (a float32 0-dim device
tensor; None before the first clipping step).
"""
from __future__ import annotations

import inspect

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .. import backend, guard
from . import launch
from .launch_cache import Entry, LaunchCache
from ..errors import InvalidTypeError, InvalidValueError

_EXTRA_DEFAULTS = {"max_grad_norm": None}
_STATE_KEYS = launch.STATE_KEYS


# torch.compile of a training step runs step() eagerly, a clean graph break: the step is one
# launch (or torch's fused Adam) already, with host-side checks and a launch cache that a traced
# graph would either freeze or re-run, so there is nothing for the compiler to fuse. Under
# fullgraph=True the break is an error, and this reason is what it says.
def _runs_eager_under_compile():
    reason = ("fastgd's optimizer step runs eagerly under torch.compile (one launch per device "
              "and dtype already); call opt.step() outside the fullgraph=True region, or compile "
              "without fullgraph")
    if "reason" in inspect.signature(torch.compiler.disable).parameters:  # not in every torch
        return torch.compiler.disable(recursive=True, reason=reason)
    return torch.compiler.disable(recursive=True)


_STEP_RUNS_EAGER = _runs_eager_under_compile()


class Adam(torch.optim.Optimizer):
    """Adam (L2 weight decay added to the gradient; ``decoupled_weight_decay=True`` is AdamW),
    argument for argument ``torch.optim.Adam``, plus keyword-only ``max_grad_norm``.

    ``foreach``, ``fused`` and ``capturable`` are kept for state_dict compatibility: the update
    is always one fused multi-tensor launch, which a CUDA graph can capture (with a tensor
    ``lr`` if the learning rate changes between replays). Capture only after a warm-up step
    with the very gradient tensors the graph will use (e.g. ``zero_grad(set_to_none=False)``):
    the launch tables are built on the host when parameter or gradient addresses change, and
    that must not happen inside a capture. ``differentiable=True`` is refused.
    """

    # GradScaler then hands step() its scale and found_inf instead of unscaling the gradients.
    _step_supports_amp_scaling = True
    # The clipping norm of the last step (not a setting: not part of state_dict or pickles).
    grad_norm: Optional[Tensor] = None
    # The kernel path's tables, kept between steps; None until a step needs them. Not state:
    # Optimizer.__getstate__ leaves it out of pickles and deep copies, and it is dropped whenever
    # param_groups are replaced or extended (load_state_dict goes through __setstate__).
    _launch_cache: Optional[LaunchCache] = None

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        decoupled_weight_decay: bool = False,
        max_grad_norm: Optional[float] = None,
    ) -> None:
        name = type(self).__name__
        _check_options(name, lr, betas, eps, weight_decay, max_grad_norm)
        if differentiable:
            raise ValueError(f"fastgd.{name}(differentiable=True): the update runs in a Triton "
                             "kernel outside autograd; use torch.optim for differentiable steps")
        if foreach and fused:
            raise ValueError(f"fastgd.{name}: `fused` and `foreach` cannot both be True")
        defaults = dict(
            lr=lr, betas=tuple(_one_element(b) for b in betas), eps=eps,
            weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, foreach=foreach,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, max_grad_norm=max_grad_norm,
        )
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ state and checkpoints
    def state_dict(self) -> dict:
        """torch's state dict; a group's ``max_grad_norm`` (ours) only where it is set, so a run
        without clipping has torch.optim.AdamW's exact layout -- DCP loads a torch checkpoint
        into it and it into torch. A state dict without the key keeps the optimizer's own
        ``max_grad_norm`` on load."""
        state = super().state_dict()
        for group in state["param_groups"]:
            if group.get("max_grad_norm", 0) is None:
                del group["max_grad_norm"]
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._launch_cache = None
        for index, group in enumerate(self.param_groups):
            for key, value in (("amsgrad", False), ("maximize", False), ("foreach", None),
                               ("capturable", False), ("differentiable", False),
                               ("fused", None), ("decoupled_weight_decay", False)):
                group.setdefault(key, value)
            for key, value in _EXTRA_DEFAULTS.items():
                group.setdefault(key, self.defaults.get(key, value))
            for position, p in enumerate(group["params"]):
                _normalise_state(p, self.state.get(p), _param_name(index, position))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._launch_cache = None

    def _init_state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if len(state) == 0:
            # step on the parameter's device as float32 (torch's fused/capturable layout): the
            # kernel reads and advances it there. (On the host for a meta parameter.)
            state["step"] = torch.zeros((), dtype=torch.float32, device=backend.step_device(p))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    # ------------------------------------------------------------------ the step
    @_STEP_RUNS_EAGER
    @torch.no_grad()
    def step(
        self,
        closure: Optional[Callable[[], Any]] = None,
        *,
        grad_scale: Optional[Tensor] = None,
        found_inf: Optional[Tensor] = None,
    ):
        """One update of every parameter that has a gradient.

        ``grad_scale`` / ``found_inf`` (default: the attributes a ``torch.amp.GradScaler`` sets
        on the optimizer): the gradients are divided by ``grad_scale``, and when ``found_inf`` is
        non-zero nothing changes -- parameters, moments, step counts."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        for what, value in (("grad_scale", grad_scale), ("found_inf", found_inf)):
            if value is not None and (not isinstance(value, Tensor) or value.numel() != 1):
                raise InvalidValueError(
                    f"fastgd.{type(self).__name__}.step({what}=...): expected a one-element "
                    f"tensor (as torch.amp.GradScaler sets), got {_summary(value)}")
        entries = self._entries()
        if entries:
            if self._launch_cache is None:
                self._launch_cache = LaunchCache()
            norm = self._launch_cache.step(self.param_groups, entries, grad_scale, found_inf)
            if norm is not None:
                self.grad_norm = norm
        return loss

    def _entries(self) -> list[Entry]:
        """Every param with a gradient, after the per-step checks that the gradient and the
        state fit it."""
        entries = []
        for index, group in enumerate(self.param_groups):
            for position, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                name = _param_name(index, position)
                if grad.is_sparse:
                    raise InvalidTypeError(
                        f"fastgd.{type(self).__name__}: {name} (shape {tuple(p.shape)}) has a "
                        "sparse gradient; Adam needs dense gradients (torch.optim.SparseAdam "
                        "handles sparse ones)")
                state = self._init_state(p, group)
                _check_fits(p, grad, state, group["amsgrad"], name)
                entries.append(Entry(index, p, grad, state, name))
        return entries


class AdamW(Adam):
    """AdamW (decoupled weight decay), argument for argument ``torch.optim.AdamW``, plus
    keyword-only ``max_grad_norm``."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: Optional[bool] = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: Optional[bool] = None,
        max_grad_norm: Optional[float] = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=True, max_grad_norm=max_grad_norm,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch.optim.AdamW: any state loads as AdamW


# ---------------------------------------------------------------------- validation and state
def _check_options(name, lr, betas, eps, weight_decay, max_grad_norm) -> None:
    """torch.optim.Adam's checks with its exception types and wording (code and test suites
    match on them), then fastgd's own for ``max_grad_norm``."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Tensor lr must be 1-element (fastgd.{name}: got shape "
                         f"{tuple(lr.shape)})")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (fastgd.{name}: expected two coefficients)")
    for i, beta in enumerate(betas):
        if isinstance(beta, Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    if max_grad_norm is not None and not (
        isinstance(max_grad_norm, (int, float)) and not isinstance(max_grad_norm, bool)
        and 0 < max_grad_norm < math.inf
    ):
        raise ValueError(f"fastgd.{name}(max_grad_norm={max_grad_norm!r}): expected None (no "
                         "clipping) or a positive finite float")


def _check_fits(p: Tensor, grad: Tensor, state: dict, amsgrad: bool, name: str) -> None:
    """The per-step checks, on every path: the gradient and each moment have ``p``'s shape,
    dtype and device (attribute compares only: the kernels' launch guard checks memory when it
    builds a table), and ``step`` is a tensor."""
    guard.require_like(grad, p, f"the gradient of {name}",
                       fix="a gradient must match its parameter (as torch requires); was .grad "
                       "or .grad.data replaced?")
    for key in _STATE_KEYS if amsgrad else _STATE_KEYS[:2]:
        guard.require_like(state.get(key), p, f"state {key!r} of {name}",
                           fix="the optimizer state no longer fits its parameter (was the state "
                           "edited, or p.data replaced after a step?); start a new optimizer "
                           "or load a matching state_dict")
    if not isinstance(state.get("step"), Tensor):
        _normalise_state(p, state, name)


def _param_name(group_index: int, position: int) -> str:
    """How messages name a parameter (the optimizer knows no module names)."""
    return f"param_groups[{group_index}]['params'][{position}]"


def _one_element(beta):
    return beta.squeeze() if isinstance(beta, Tensor) and beta.dim() != 0 else beta


def _normalise_state(p: Tensor, state: Optional[dict], name: str) -> None:
    """Give loaded state fastgd's layout -- ``step`` a float32 tensor on ``p``'s device (a legacy
    Python-number step included), moments in ``p``'s layout -- and refuse moments that do not
    fit ``p`` (torch's load_state_dict already matched dtype and device, not shape)."""
    if not state:
        return
    step = state.get("step")
    if step is not None:
        if not isinstance(step, Tensor):
            step = torch.tensor(float(step))
        device = backend.step_device(p)
        if step.device != device or step.dtype != torch.float32 or step.dim() != 0:
            step = step.to(device=device, dtype=torch.float32).reshape(())
        state["step"] = step
    for key in _STATE_KEYS:
        s = state.get(key)
        if s is None:
            continue
        guard.require_like(s, p, f"the loaded state {key!r} of {name}",
                           fix="this state_dict belongs to another model (or was edited): load "
                           "the optimizer state saved with these parameters")
        if s.stride() != p.stride():
            state[key] = torch.empty_like(p, memory_format=torch.preserve_format).copy_(s)


def _summary(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
