"""Hugging Face transformers integration: causal LMs whose training loss never materialises
the logits, and ``fastgd.AdamW`` built the way the Trainer builds its optimizer.

    import fastgd.transformers
    model = fastgd.transformers.apply(AutoModelForCausalLM.from_pretrained(...))
    trainer = Trainer(model=model, args=args, train_dataset=...,
                      optimizer_cls_and_kwargs=fastgd.transformers.optimizer_cls_and_kwargs(args))

or in a plain loop ``opt = fastgd.transformers.adamw(model, lr=3e-4, weight_decay=0.1)`` and
``model(input_ids, labels=labels).loss.backward()``.

transformers is an optional dependency (``pip install fastgd[hf]``); ``import fastgd`` never
imports it, this module does. The implementation lives in :mod:`fastgd.integrations`
(``hf_causal_lm``: the patch; ``hf_architectures``: what is supported and the checks;
``hf_loss``: the loss from the hidden states; ``hf_optim``: the optimizer helpers).
"""
try:
    import transformers  # noqa: F401
except ImportError as error:
    raise ImportError("fastgd.transformers needs Hugging Face transformers: "
                      "pip install fastgd[hf]") from error

from .integrations.hf_architectures import SUPPORTED
from .integrations.hf_causal_lm import FusedLossOptions, apply, is_applied, undo
from .integrations.hf_optim import adamw, optimizer_cls_and_kwargs, parameter_groups

__all__ = ["SUPPORTED", "FusedLossOptions", "adamw", "apply", "is_applied",
           "optimizer_cls_and_kwargs", "parameter_groups", "undo"]
