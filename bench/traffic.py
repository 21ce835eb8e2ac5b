"""The least each benchmarked operation must move through device memory (or compute), so every
time can be read against a floor: achieved GB/s = these bytes / measured time.

The floors count each input read once and each output written once, whatever a given
implementation actually does; every provider of a case is measured against the same number, so a
provider that re-reads its input shows it as a lower GB/s, not as a different yardstick.
"""
from __future__ import annotations

TARGET_BYTES = 8  # int64 class indices
ROW_RESULT_BYTES = 4  # one fp32 value per row (the loss, or the saved logsumexp)

CE_MODES = ("fwd", "bwd", "fwd+bwd")


def cross_entropy_bytes(n_rows: int, n_classes: int, itemsize: int, mode: str) -> int:
    """Bytes a cross-entropy over ``(n_rows, n_classes)`` logits of ``itemsize`` bytes must move.

    * ``fwd``: read the logits and the targets, write one fp32 loss per row.
    * ``bwd``: read the logits, the targets and the saved per-row logsumexp, write the gradient
      (same shape and dtype as the logits).
    * ``fwd+bwd``: read the logits once and write the gradient once (plus targets and per-row
      values): what a single pass that produces the gradient in the forward would move. A
      two-pass forward-then-backward reads the logits twice and so reaches at most 2/3 of the
      copy bandwidth on this figure.
    """
    logits = n_rows * n_classes * itemsize
    per_row = n_rows * (TARGET_BYTES + ROW_RESULT_BYTES)
    if mode == "fwd":
        return logits + per_row
    if mode in ("bwd", "fwd+bwd"):  # the same floor: logits in, gradient out
        return 2 * logits + per_row
    raise ValueError(f"cross_entropy_bytes(mode={mode!r}): expected one of {CE_MODES}")


def adam_bytes(numel: int, itemsize: int, clip: bool) -> int:
    """Bytes one Adam/AdamW step over ``numel`` parameters must move, with the parameter, its
    gradient and both moments stored in ``itemsize``-byte elements (torch keeps the moments in
    the parameter's dtype).

    The update reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg, exp_avg_sq:
    7 tensors. Clipping by the global norm needs that norm before any update, so the gradients
    are read once more: 8 tensors.
    """
    tensors = 8 if clip else 7
    return tensors * numel * itemsize


def linear_cross_entropy_flops(n_rows: int, hidden: int, n_classes: int, mode: str) -> int:
    """Matrix-product FLOPs of ``cross_entropy(hidden @ weight.T, target)`` (the softmax is
    negligible next to them): the forward's logits ``2 N H V``; the backward's ``d_hidden`` and
    ``d_weight`` ``2 N H V`` each. An implementation that recomputes the logits in the backward
    (to avoid storing them) does ``2 N H V`` more than this floor."""
    product = 2 * n_rows * hidden * n_classes
    if mode == "fwd":
        return product
    if mode == "fwd+bwd":
        return 3 * product
    raise ValueError(f"linear_cross_entropy_flops(mode={mode!r}): expected 'fwd' or 'fwd+bwd'")


def linear_cross_entropy_bytes(n_rows: int, hidden: int, n_classes: int, itemsize: int,
                               mode: str) -> int:
    """Bytes of the inputs and outputs alone: ``hidden`` and ``weight`` read once (and, with the
    backward, their gradients written once) plus targets and per-row results. Far below what
    the FLOPs cost: this case is bound by arithmetic, and read against the matrix-product rate."""
    inputs = (n_rows + n_classes) * hidden * itemsize
    per_row = n_rows * (TARGET_BYTES + ROW_RESULT_BYTES)
    if mode == "fwd":
        return inputs + per_row
    if mode == "fwd+bwd":
        return 2 * inputs + per_row
    raise ValueError(f"linear_cross_entropy_bytes(mode={mode!r}): expected 'fwd' or 'fwd+bwd'")


def copy_bytes(numel: int, itemsize: int) -> int:
    """A device-to-device copy reads and writes every element once."""
    return 2 * numel * itemsize
