"""``fastgd.AdamW`` the way transformers' ``Trainer`` builds its AdamW.

The Trainer (``create_optimizer``) makes two parameter groups of the trainable parameters:
those named by ``Trainer.get_decay_parameter_names(model)`` (everything but biases, LayerNorm
modules and parameters whose name says norm) with ``args.weight_decay``, the rest with 0; and
``optim="adamw_torch"`` passes ``lr=args.learning_rate``, ``betas=(args.adam_beta1,
args.adam_beta2)``, ``eps=args.adam_epsilon`` (``Trainer.get_optimizer_cls_and_kwargs``).
``TrainingArguments(optim=...)`` cannot name fastgd: it converts the string to its closed
``OptimizerNames`` enum, so a custom optimizer goes in through ``optimizer_cls_and_kwargs``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

import fastgd


def optimizer_cls_and_kwargs(args) -> tuple[type, dict[str, Any]]:
    """``Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args))``: the Trainer
    then builds its own two groups (with ``args.weight_decay``) and a ``fastgd.AdamW`` with the
    hyperparameters ``optim="adamw_torch"`` would get."""
    return fastgd.AdamW, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                          "eps": args.adam_epsilon}


def adamw(model: nn.Module, args=None, **adamw_kwargs) -> "fastgd.AdamW":
    """A ``fastgd.AdamW`` over ``model``'s trainable parameters in the Trainer's two groups.

    ``args``: a ``TrainingArguments`` to take ``learning_rate``, the betas, ``adam_epsilon``
    and ``weight_decay`` from (what the Trainer would use); ``adamw_kwargs`` (any argument of
    ``fastgd.AdamW``) override them. Without ``args``, ``weight_decay`` defaults to
    ``torch.optim.AdamW``'s 0.01 and applies to the decay group only."""
    hyper: dict[str, Any] = {}
    if args is not None:
        hyper = {**optimizer_cls_and_kwargs(args)[1], "weight_decay": args.weight_decay}
    hyper.update(adamw_kwargs)
    return fastgd.AdamW(parameter_groups(model, hyper.pop("weight_decay", 0.01)), **hyper)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The Trainer's groups: ``[{decayed, weight_decay}, {the rest, 0.0}]``, trainable only."""
    decayed = set(_decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0}]


def _decay_parameter_names(model: nn.Module) -> list[str]:
    from transformers import Trainer
    # The Trainer's own rule, so the groups follow transformers when it changes it. It is an
    # instance method that reads nothing of the Trainer (transformers 4.57-5.x); there is no
    # Trainer here, hence self=None.
    return Trainer.get_decay_parameter_names(None, model)
