"""The training loss of a Hugging Face causal LM, from its final hidden states and LM head.

transformers' ``ForCausalLMLoss`` (transformers/loss/loss_utils.py) computes, for logits
``z = lm_head(h)`` (soft-capped by Gemma 2/3 first) and labels ``y`` of shape ``(B, T)``:

    y'[b, t] = y[b, t + 1]  for t < T - 1,   y'[b, T - 1] = ignore_index    (or ``shift_labels``)
    loss = sum_{(b,t): y' != ignore_index} -log softmax(z[b, t])[y'[b, t]]  /  D
    D = num_items_in_batch if given (the Trainer's token count over the accumulated batch),
        else the number of counted positions

in float32. :func:`causal_lm_loss` computes the same with ``fastgd.linear_cross_entropy`` on
``h`` and the head's weight, so the ``B x T x V`` logits never exist.
"""
from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

import fastgd
from ..errors import InvalidValueError

try:  # the helper the models' forwards use (int, 1-D or 2-D index tensor, or boolean mask)
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # older transformers sliced inline, with an int or a 1-D index tensor only
    def slice_logits_to_keep(hidden_states: Tensor, logits_to_keep: Union[int, Tensor]) -> Tensor:
        if isinstance(logits_to_keep, int):
            logits_to_keep = slice(-logits_to_keep, None)
        return hidden_states[:, logits_to_keep, :]


def causal_lm_loss(
    hidden: Tensor,
    head_weight: Tensor,
    labels: Optional[Tensor],
    *,
    shift_labels: Optional[Tensor] = None,
    logits_to_keep: Union[int, Tensor] = 0,
    ignore_index: int = -100,
    num_items_in_batch: Union[int, Tensor, None] = None,
    softcap: Optional[float] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> Tensor:
    """``ForCausalLMLoss(lm_head(slice_logits_to_keep(hidden, logits_to_keep)), labels, ...)``
    without the logits: ``hidden`` is the decoder's ``last_hidden_state`` ``(B, T, H)``,
    ``head_weight`` the LM head's ``(V, H)`` weight."""
    if shift_labels is None:
        # tokens < n predict n: the last position has no next token and is ignored
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = slice_logits_to_keep(hidden, logits_to_keep)
    rows = hidden.reshape(-1, hidden.shape[-1])
    target = shift_labels.reshape(-1).to(rows.device)
    if target.shape[0] != rows.shape[0]:
        # transformers fails here too (F.cross_entropy on mismatched sizes), less clearly
        raise InvalidValueError(
            f"the labels give {target.shape[0]} targets for {rows.shape[0]} kept positions "
            f"(logits_to_keep={_describe(logits_to_keep)}): with logits_to_keep, pass "
            f"shift_labels of the kept positions' shape")
    if isinstance(num_items_in_batch, Tensor):
        # the Trainer's count may live on another device; 0-dim, read on the device (no sync)
        num_items_in_batch = num_items_in_batch.to(rows.device).reshape(())
    # under autocast linear_cross_entropy casts the head as F.linear would (its own rule)
    return fastgd.linear_cross_entropy(
        rows, head_weight, target, ignore_index=ignore_index, num_items=num_items_in_batch,
        softcap=softcap, label_smoothing=label_smoothing, z_loss=z_loss)


def _describe(logits_to_keep) -> str:
    if isinstance(logits_to_keep, Tensor):
        return f"a {logits_to_keep.dtype} tensor of shape {tuple(logits_to_keep.shape)}"
    return repr(logits_to_keep)
