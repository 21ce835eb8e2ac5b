"""Cross-entropy over a large vocabulary: one program per row, looping over the classes.

Notation for one row ``x`` (C logits) with target ``t``, class weights ``w`` (all 1 without
weights), ``W = sum_c w_c``, label smoothing ``eps``, scale ``s`` and soft cap ``cap``:

    z_c   = cap * tanh(s * x_c / cap)          (z_c = s * x_c without a soft cap)
    lse   = log sum_c exp(z_c)
    p_c   = exp(z_c - lse)
    ce    = (1 - eps) * w_t * (lse - z_t)  +  eps / C * sum_c w_c * (lse - z_c)
          = (1 - eps) * w_t * (lse - z_t)  +  eps / C * (W * lse - sum_c w_c z_c)

which is torch's per-row loss with label smoothing and class weights (0 for an ignored row).
Given the upstream gradients ``g_ce`` (of ce) and ``g_lse`` (of lse, e.g. from a z-loss):

    d/dz_c = g_ce * [ (1 - eps) * w_t * (p_c - [c == t])  +  eps / C * (W * p_c - w_c) ]
             + g_lse * p_c
    d/dx_c = d/dz_c * s * (1 - (z_c / cap)^2)       (d/dz_c * s without a soft cap)

Bytes moved (N rows, C classes, b bytes per logit): the forward reads the logits once (N*C*b)
with an online logsumexp; the backward reads them once and writes the gradient once (2*N*C*b).
That is the floor for the two passes (the forward must see every logit, the gradient must be
written), plus O(N) for targets, per-row results and, with class weights, reads of ``w`` that
stay in L2. An ignored row whose lse gradient is not needed is not read in the backward at all.

Vocabulary-parallel (the classes of a row split over ranks, rank ``r`` holding classes
``[o_r, o_r + C_r)`` of ``C``): each rank's forward reduces only its slice, to the row's parts

    lse_r = log sum_{c in r} exp(z_c),   zt_r = z_t if t in r else 0,   wz_r = sum_{c in r} w_c z_c

which combine over ranks into the whole row's ``lse = log sum_r exp(lse_r)``, ``z_t = sum_r zt_r``
and ``sum_c w_c z_c = sum_r wz_r`` (all-reduces of N-vectors, done by the caller), hence ``ce``
above. The backward needs no communication: given the whole row's ``lse``, each rank writes
``d/dx_c`` for its own classes with the formula above (``C``, ``W`` and ``w_t`` of the whole row,
the spike ``[c == t]`` only on the rank holding ``t``). Without sharding, ``o = 0`` and ``C_r = C``.
"""
import triton
import triton.language as tl

from .common import float_arg, round_for_store, tanh


@triton.jit
def _scaled_capped(x, logit_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    z = x * logit_scale
    if HAS_SOFTCAP:
        z = softcap * tanh(z / softcap)
    return z


@triton.jit
def _target_info(
    target_ptr, weight_ptr, row, n_classes, ignore_index, HAS_WEIGHT: tl.constexpr,
    COMPUTE: tl.constexpr,
):
    """(target clamped into range, is the row ignored, is the target valid, weight of target)."""
    target = tl.load(target_ptr + row).to(tl.int64)
    ignored = target == ignore_index
    in_range = (target >= 0) & (target < n_classes)
    # A target outside [0, C) is never used as an address: it is clamped and the row made NaN.
    safe_target = tl.where(in_range, target, 0)
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + safe_target).to(COMPUTE)
    else:
        w_t = 1.0
    return safe_target, ignored, in_range, w_t


@triton.jit
def _row_logsumexp(
    row_ptr, stride_col, weight_ptr, n_classes, logit_scale, softcap, HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """(logsumexp of the row's z, sum_c w_c z_c when smoothing, else 0) in one read (online)."""
    cols = tl.arange(0, BLOCK_V)
    running_max = tl.full([], -float("inf"), COMPUTE)
    running_sum = tl.zeros([], COMPUTE)  # sum exp(z - running_max)
    weighted_z_sum = tl.zeros([], COMPUTE)  # sum_c w_c z_c, for label smoothing
    for start in range(0, n_classes, BLOCK_V):
        offs = start + cols
        mask = offs < n_classes
        x = tl.load(row_ptr + offs * stride_col, mask=mask, other=0.0).to(COMPUTE)
        z = tl.where(mask, _scaled_capped(x, logit_scale, softcap, HAS_SOFTCAP), -float("inf"))
        new_max = tl.maximum(running_max, tl.max(z, 0))
        # While every logit so far is -inf (a masked vocabulary), shift by 0 instead of -inf:
        # exp(-inf - -inf) would be NaN and poison the rest of the row.
        shift = tl.where(new_max == -float("inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(z - shift), 0)
        running_max = new_max
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
                weighted_z_sum += tl.sum(tl.where(mask, z * w, 0.0), 0)
            else:
                weighted_z_sum += tl.sum(tl.where(mask, z, 0.0), 0)
    return running_max + tl.log(running_sum), weighted_z_sum


@triton.jit
def cross_entropy_forward_kernel(
    logits_ptr,  # (N, C) logits, any float dtype
    stride_row,  # elements between consecutive rows of logits
    stride_col,  # elements between consecutive classes (1 when contiguous)
    target_ptr,  # (N,) int32/int64 class indices
    weight_ptr,  # (C,) class weights (unused without HAS_WEIGHT)
    weight_sum_ptr,  # 0-dim sum of the class weights (unused without HAS_WEIGHT)
    ce_ptr,  # (N,) out: per-row loss as defined above, float32 (float64 for float64 logits)
    lse_ptr,  # (N,) out: per-row logsumexp of z
    n_classes,
    ignore_index,
    label_smoothing_hi,  # float options as exact (hi, lo) fp32 pairs: see common.float_arg
    label_smoothing_lo,
    logit_scale_hi,
    logit_scale_lo,
    softcap_hi,
    softcap_lo,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 logits
    BLOCK_V: tl.constexpr,
):
    """Per-row ``ce`` and ``lse`` in one read of the logits (online logsumexp)."""
    label_smoothing = float_arg(label_smoothing_hi, label_smoothing_lo, COMPUTE)
    logit_scale = float_arg(logit_scale_hi, logit_scale_lo, COMPUTE)
    softcap = float_arg(softcap_hi, softcap_lo, COMPUTE)
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may exceed 2**31
    row_ptr = logits_ptr + row * stride_row
    lse, weighted_z_sum = _row_logsumexp(
        row_ptr, stride_col, weight_ptr, n_classes, logit_scale, softcap, HAS_WEIGHT,
        HAS_SMOOTHING, HAS_SOFTCAP, COMPUTE, BLOCK_V,
    )

    safe_target, ignored, in_range, w_t = _target_info(
        target_ptr, weight_ptr, row, n_classes, ignore_index, HAS_WEIGHT, COMPUTE
    )
    x_t = tl.load(row_ptr + safe_target * stride_col).to(COMPUTE)
    z_t = _scaled_capped(x_t, logit_scale, softcap, HAS_SOFTCAP)
    ce = (1.0 - label_smoothing) * w_t * (lse - z_t)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            w_sum = tl.load(weight_sum_ptr).to(COMPUTE)
        else:
            w_sum = n_classes * 1.0
        ce += label_smoothing / n_classes * (w_sum * lse - weighted_z_sum)
    ce = tl.where(ignored, 0.0, tl.where(in_range, ce, float("nan")))
    tl.store(ce_ptr + row, ce)
    tl.store(lse_ptr + row, lse)


@triton.jit
def cross_entropy_shard_forward_kernel(
    logits_ptr,  # (N, C_r) this rank's slice of the logits: classes [class_offset, +C_r)
    stride_row,
    stride_col,
    target_ptr,  # (N,) class indices into the whole vocabulary
    weight_ptr,  # (C,) the whole vocabulary's class weights (unused without HAS_WEIGHT)
    lse_ptr,  # (N,) out: lse_r, the logsumexp over this slice
    target_z_ptr,  # (N,) out: zt_r, z_t where this slice holds the target, else 0
    weighted_z_ptr,  # (N,) out: wz_r = sum over this slice of w_c z_c (0 without smoothing)
    n_classes,  # C_r >= 1
    class_offset,
    logit_scale_hi,
    logit_scale_lo,
    softcap_hi,
    softcap_lo,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One rank's parts of the vocabulary-parallel forward (module docstring), one read."""
    logit_scale = float_arg(logit_scale_hi, logit_scale_lo, COMPUTE)
    softcap = float_arg(softcap_hi, softcap_lo, COMPUTE)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    lse, weighted_z_sum = _row_logsumexp(
        row_ptr, stride_col, weight_ptr + class_offset, n_classes, logit_scale, softcap,
        HAS_WEIGHT, HAS_SMOOTHING, HAS_SOFTCAP, COMPUTE, BLOCK_V,
    )
    local_target = tl.load(target_ptr + row).to(tl.int64) - class_offset
    held = (local_target >= 0) & (local_target < n_classes)
    # A target held elsewhere (or ignored, or out of range) is never used as an address.
    x_t = tl.load(row_ptr + tl.where(held, local_target, 0) * stride_col).to(COMPUTE)
    z_t = _scaled_capped(x_t, logit_scale, softcap, HAS_SOFTCAP)
    tl.store(lse_ptr + row, lse)
    tl.store(target_z_ptr + row, tl.where(held, z_t, 0.0))
    tl.store(weighted_z_ptr + row, weighted_z_sum)


@triton.jit
def cross_entropy_backward_kernel(
    logits_ptr,  # (N, C) logits read here (may be grad_ptr itself: see in-place below)
    stride_row,
    stride_col,
    grad_ptr,  # (N, C) out: d loss / d logits, in the logits' dtype
    grad_stride_row,
    grad_stride_col,
    target_ptr,
    weight_ptr,
    weight_sum_ptr,
    lse_ptr,  # (N,) from the forward
    grad_ce_ptr,  # (N,) upstream gradient of ce
    grad_lse_ptr,  # (N,) upstream gradient of lse (unused without HAS_GRAD_LSE)
    n_classes,  # classes in these logits: C_r of a vocabulary slice, else C
    class_offset,  # the logits hold classes [class_offset, class_offset + n_classes) ...
    total_classes,  # ... of total_classes (C); 0 and n_classes without vocabulary sharding
    ignore_index,
    label_smoothing_hi,  # float options as exact (hi, lo) fp32 pairs: see common.float_arg
    label_smoothing_lo,
    logit_scale_hi,
    logit_scale_lo,
    softcap_hi,
    softcap_lo,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_GRAD_LSE: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """``d/dx`` of the row loss, one read of the logits and one write of the gradient.

    In place (``grad_ptr == logits_ptr``) is safe: each element is read before the same program
    overwrites it, and no program touches another row."""
    label_smoothing = float_arg(label_smoothing_hi, label_smoothing_lo, COMPUTE)
    logit_scale = float_arg(logit_scale_hi, logit_scale_lo, COMPUTE)
    softcap = float_arg(softcap_hi, softcap_lo, COMPUTE)
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    grad_row_ptr = grad_ptr + row * grad_stride_row
    cols = tl.arange(0, BLOCK_V)

    safe_target, ignored, in_range, w_t = _target_info(
        target_ptr, weight_ptr, row, total_classes, ignore_index, HAS_WEIGHT, COMPUTE
    )
    local_target = safe_target - class_offset  # outside [0, n_classes) when held elsewhere
    lse = tl.load(lse_ptr + row).to(COMPUTE)
    # An ignored row's ce is the constant 0; an invalid target's row gets a NaN gradient.
    g_ce = tl.load(grad_ce_ptr + row).to(COMPUTE)
    g_ce = tl.where(ignored, 0.0, tl.where(in_range, g_ce, float("nan")))
    if HAS_GRAD_LSE:
        g_lse = tl.load(grad_lse_ptr + row).to(COMPUTE)
        read_limit = n_classes
    else:
        g_lse = 0.0
        # The gradient of an ignored row is all zeros: skip reading its logits. (A limit rather
        # than `mask & row_flag`: the interpreter turns a block & scalar of bools into ints.)
        read_limit = tl.where(ignored, 0, n_classes)

    # Kept apart, not folded into one coefficient of p_c: at the target, (p_t - 1) is exact
    # where p_t is near 1, while coef_true * p_t - coef_true would cancel away the small terms
    # (the z-loss gradient of a single-class row, say) in rounding.
    coef_true = g_ce * (1.0 - label_smoothing) * w_t  # times (p_c - [c == t])
    coef_p = g_lse  # times p_c
    coef_w = 0.0  # times -w_c
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            w_sum = tl.load(weight_sum_ptr).to(COMPUTE)
        else:
            w_sum = total_classes * 1.0
        coef_p += g_ce * label_smoothing / total_classes * w_sum
        coef_w = g_ce * label_smoothing / total_classes

    for start in range(0, n_classes, BLOCK_V):
        offs = start + cols
        mask = offs < n_classes
        x = tl.load(row_ptr + offs * stride_col, mask=offs < read_limit, other=0.0).to(COMPUTE)
        z = _scaled_capped(x, logit_scale, softcap, HAS_SOFTCAP)
        p = tl.exp(z - lse)
        dz = coef_true * (p - tl.where(offs == local_target, 1.0, 0.0)) + coef_p * p
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + class_offset + offs, mask=mask, other=0.0).to(COMPUTE)
                dz -= coef_w * w
            else:
                dz -= coef_w
        if HAS_SOFTCAP:
            t = z / softcap
            dx = dz * logit_scale * (1.0 - t * t)
        else:
            dx = dz * logit_scale
        dx = tl.where(offs < read_limit, dx, 0.0)
        tl.store(
            grad_row_ptr + offs * grad_stride_col,
            round_for_store(dx, grad_ptr.dtype.element_ty),
            mask=mask,
        )
