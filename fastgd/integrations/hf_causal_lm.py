"""Make a transformers causal LM compute its training loss with ``fastgd.linear_cross_entropy``.

How (the least invasive hook transformers 5 offers): the model *instance* gets a ``forward``
that, when ``labels`` are given, runs the model's own forward unchanged except for two
arguments -- no ``labels`` and ``logits_to_keep`` an empty index tensor, so the LM head projects
zero positions (a ``B x 0 x V`` tensor, soft cap included) -- while a forward hook on the
decoder (``model.get_decoder()``) hands over its ``last_hidden_state``, exactly what the head
would have read. The loss is then :func:`~fastgd.integrations.hf_loss.causal_lm_loss` on those
states and ``lm_head.weight``, and the output is the model's own output class with that loss
and ``logits=None``. Nothing of an architecture's forward is copied: every argument (attention
masks, caches, position ids, ``num_items_in_batch``, flash-attention kwargs...) reaches the
decoder exactly as the model sends it, and the outputs (cache, hidden states, attentions) are
the model's own.

What happens after the decoder (the head, the soft cap, the loss) is the one thing taken on
trust per architecture: ``hf_architectures`` lists the ones read and tested, and refuses the
rest by name.

The patch state lives on the instance (``model._fastgd_patch``), never in a process-wide flag:
two models in one process may be patched differently, ``copy.deepcopy`` copies the patch with
the model, and :func:`undo` restores the instance.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import InvalidValueError
from .hf_architectures import (SOFTCAPPED, architecture_of, check_head,
                               check_loss_is_causal_lm, decoder_of)
from .hf_loss import causal_lm_loss


@dataclasses.dataclass(frozen=True)
class FusedLossOptions:
    """What :func:`apply` was asked for. ``label_smoothing`` and ``z_loss`` are fastgd's (and
    torch's) meanings; transformers' causal LMs use neither (0 keeps their loss exactly)."""
    keep_eval_logits: bool = False  # in eval mode run the model unchanged (logits for metrics)
    label_smoothing: float = 0.0
    z_loss: float = 0.0


@dataclasses.dataclass
class _Patch:
    forward: Callable  # the function bound as model.forward by apply (to recognise it)
    inner_forward: Optional[Callable]  # the instance's own forward before apply, if it had one
    architecture: str
    options: FusedLossOptions


def apply(model: nn.Module, *, keep_eval_logits: bool = False, label_smoothing: float = 0.0,
          z_loss: float = 0.0) -> nn.Module:
    """Patch ``model`` (in place; returned for chaining) so that a forward with ``labels``
    computes the loss with ``fastgd.linear_cross_entropy`` and returns ``logits=None``.

    A forward without labels, or with ``return_logits=True`` (ours, removed before the model
    sees it), runs the model unchanged. ``keep_eval_logits=True`` does the same whenever the
    model is in eval mode (e.g. ``Trainer.evaluate`` with ``compute_metrics``). Applying again
    only replaces the options."""
    architecture = architecture_of(model)
    check_head(model)
    decoder_of(model)
    if not 0.0 <= label_smoothing <= 1.0:
        raise InvalidValueError(f"label_smoothing={label_smoothing!r}: must be in [0, 1]")
    if not z_loss >= 0.0:
        raise InvalidValueError(f"z_loss={z_loss!r}: must be >= 0")
    options = FusedLossOptions(bool(keep_eval_logits), float(label_smoothing), float(z_loss))
    patch = model.__dict__.get("_fastgd_patch")
    if patch is not None:
        patch.options = options
        return model
    forward = _forward_like(type(model).forward)
    model._fastgd_patch = _Patch(forward=forward, inner_forward=model.__dict__.get("forward"),
                                 architecture=architecture, options=options)
    # bound to the instance (not a closure over it), so that deepcopy rebinds it to the copy
    # and accelerate's mixed-precision wrapper (which rebinds model.forward.__func__) keeps it
    model.forward = types.MethodType(forward, model)
    return model


def undo(model: nn.Module) -> nn.Module:
    """Remove :func:`apply`'s patch (a no-op on a model that is not patched)."""
    patch = model.__dict__.get("_fastgd_patch")
    if patch is None:
        return model
    if getattr(model.forward, "__func__", None) is not patch.forward:
        raise RuntimeError(
            "model.forward was wrapped again after fastgd.transformers.apply (accelerate does "
            "this for mixed precision when a Trainer prepares the model); undoing would drop "
            "that wrapper too. Undo before handing the model to the Trainer, or keep the patch")
    if patch.inner_forward is None:
        del model.forward
    else:
        model.forward = patch.inner_forward
    del model._fastgd_patch
    return model


def is_applied(model: nn.Module) -> bool:
    return "_fastgd_patch" in model.__dict__


# --------------------------------------------------------------------------- the forward
def _forward_like(class_forward: Callable) -> Callable:
    """A forward with ``class_forward``'s signature (``functools.wraps``): the Trainer reads it
    to keep dataset columns and to decide that the model takes ``num_items_in_batch``."""
    @functools.wraps(class_forward)
    def forward(self, *args, **kwargs):
        return _fused_forward(self, *args, **kwargs)
    return forward


def _fused_forward(model: nn.Module, *args, **kwargs):
    patch: _Patch = model._fastgd_patch
    inner = patch.inner_forward or types.MethodType(type(model).forward, model)
    return_logits = kwargs.pop("return_logits", False)
    kwargs = _as_keywords(type(model).forward, args, kwargs)
    if (kwargs.get("labels") is None or return_logits
            or (patch.options.keep_eval_logits and not model.training)):
        return inner(**kwargs)
    check_head(model)
    check_loss_is_causal_lm(model)
    labels = kwargs.pop("labels")
    logits_to_keep = kwargs.pop("logits_to_keep", 0)
    return_dict = _wants_return_dict(model, kwargs.pop("return_dict", None))
    head = model.get_output_embeddings()
    # The model's own forward, projecting no position: its lm_head call costs nothing, and
    # everything before it (the decoder, with every kwarg) is exactly what it always runs.
    no_position = torch.empty(0, dtype=torch.long, device=head.weight.device)
    hidden, out = _run_capturing_last_hidden_state(
        model, inner, dict(kwargs, logits_to_keep=no_position, return_dict=True))
    softcap = model.config.final_logit_softcapping if patch.architecture in SOFTCAPPED else None
    loss = causal_lm_loss(
        hidden, head.weight, labels, shift_labels=kwargs.get("shift_labels"),
        logits_to_keep=logits_to_keep, ignore_index=kwargs.get("ignore_index", -100),
        num_items_in_batch=kwargs.get("num_items_in_batch"), softcap=softcap,
        label_smoothing=patch.options.label_smoothing, z_loss=patch.options.z_loss)
    # ModelOutput cannot unset a field (setting None leaves the dict entry): build a new one
    fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
    result = type(out)(loss=loss, **fields)
    return result if return_dict else result.to_tuple()


def _run_capturing_last_hidden_state(model: nn.Module, inner: Callable, kwargs: dict):
    captured: list[Tensor] = []

    def keep(module, inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    decoder = decoder_of(model)
    handle = decoder.register_forward_hook(keep)
    try:
        out = inner(**kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"{type(model).__name__}.forward ran its decoder ({type(decoder).__name__}) "
            f"{len(captured)} times; fastgd.transformers needs exactly one run")
    return captured[0], out


def _as_keywords(class_forward: Callable, args: tuple, kwargs: dict) -> dict:
    """Positional arguments named by the model's forward (whose order differs between
    architectures: GPT-2's second is the cache, Llama's the attention mask)."""
    if not args:
        return kwargs
    names = _positional_names(class_forward)
    if len(args) > len(names):
        raise TypeError(f"forward() takes {len(names)} positional arguments but {len(args)} "
                        f"were given")
    named = dict(zip(names, args))
    clash = named.keys() & kwargs.keys()
    if clash:
        raise TypeError(f"forward() got multiple values for {sorted(clash)}")
    return {**named, **kwargs}


@functools.lru_cache(maxsize=None)
def _positional_names(class_forward: Callable) -> tuple[str, ...]:
    parameters = list(inspect.signature(class_forward).parameters.values())[1:]  # no self
    return tuple(p.name for p in parameters
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _wants_return_dict(model: nn.Module, passed: Any) -> bool:
    """transformers' ``can_return_tuple`` rule: the argument if given, else the config's."""
    if passed is not None:
        return bool(passed)
    return bool(getattr(model.config, "return_dict", True))
