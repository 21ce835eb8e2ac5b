"""Which transformers causal LMs fastgd.transformers supports, and the checks that a model is
one it can compute the loss of.

Supported means: the forward is ``logits = lm_head(decoder(...).last_hidden_state)`` --
soft-capped by ``config.final_logit_softcapping`` for the architectures in ``SOFTCAPPED`` --
and the loss is transformers' ``ForCausalLMLoss`` on those logits, with a bias-free
``nn.Linear`` head. Read from each forward (transformers 4.57 and 5.25) and tested per
architecture. Others are refused by name: a logit scale (Cohere, Granite), an auxiliary loss
added to the LM loss (Mixtral, Qwen3-MoE) or a head bias (Phi-2) would be computed wrong.
"""
from __future__ import annotations

from torch import nn

from ..errors import InvalidTypeError, InvalidValueError

SUPPORTED: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "GPT2LMHeadModel",
)
SOFTCAPPED = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM"})


def architecture_of(model: nn.Module) -> str:
    """The supported transformers class ``model`` is (or derives from), else a clear error."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED and cls.__module__.startswith("transformers."):
            return cls.__name__
    raise InvalidTypeError(
        f"fastgd.transformers does not support {type(model).__name__}; supported "
        f"architectures: {', '.join(SUPPORTED)}. (Others may compute their logits or loss "
        f"differently -- a logit scale, an auxiliary loss -- so they are refused rather than "
        f"trained with a wrong loss.)")


def decoder_of(model: nn.Module) -> nn.Module:
    """The module whose ``last_hidden_state`` the head reads (``model.model``, GPT-2's
    ``model.transformer``). Neither lookup alone finds it in every version: in transformers 4.57
    ``get_decoder()`` is the model itself for GPT-2, and Gemma3ForCausalLM's
    ``base_model_prefix`` names no attribute."""
    decoder = model.get_decoder()
    if decoder is model:
        decoder = model.base_model
    if decoder is model:
        raise InvalidTypeError(f"{type(model).__name__}: found no decoder module (neither "
                               f"get_decoder() nor base_model is a submodule)")
    return decoder


def check_head(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear:
        raise InvalidTypeError(
            f"{type(model).__name__}'s LM head is a {type(head).__name__}, not a plain "
            f"torch.nn.Linear (an adapter on the head?): fastgd.transformers reads its weight "
            f"and would skip whatever its forward adds")
    if head.bias is not None:
        raise InvalidValueError(
            f"{type(model).__name__}'s LM head has a bias; fastgd.transformers supports "
            f"bias-free heads only (those of {', '.join(SUPPORTED)})")


def check_loss_is_causal_lm(model: nn.Module) -> None:
    """The model's forward would call ``model.loss_function``; refuse if that is not
    transformers' ``ForCausalLMLoss`` (a custom loss set on the model, or another loss_type)."""
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    loss_type = getattr(model, "loss_type", None)
    custom = model.__dict__.get("_loss_function")
    if custom is not None or LOSS_MAPPING.get(loss_type, ForCausalLMLoss) is not ForCausalLMLoss:
        which = "a custom loss_function" if custom is not None else f"loss_type={loss_type!r}"
        raise InvalidValueError(
            f"{type(model).__name__} has a loss other than transformers' ForCausalLMLoss "
            f"({which}); fastgd.transformers computes that one only: undo the patch with "
            f"fastgd.transformers.undo(model) to train with this loss")
