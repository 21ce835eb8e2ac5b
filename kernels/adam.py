"""Multi-tensor Adam / AdamW update and the global gradient norm: one launch for every tensor of
one (device, dtype), whatever their number and sizes.

Work layout. The tensors of a launch are cut into blocks of ``BLOCK`` elements; program ``pid``
looks up its tensor in ``block_table[pid]`` and finds everything else in two host-built tables
(int64, floats stored as their float64 bits):

* the tensor table, one row per tensor (``T_*`` columns of ``adam_table.py``): addresses of
  the parameter, its gradient and its states, ``numel``, the tensor's first block and block
  count, its param group;
* the group table, one row per param group (``G_*`` columns): flags and hyperparameters. ``lr``
  and the betas are either a value in the table or the address of a 0-dim tensor read here, so a
  tensor learning rate changed in place (LR schedulers use ``fill_``) needs no new table.

Adam step ``t`` of one tensor (``t`` read from its float32 ``step`` tensor, plus one), with
``g`` the gradient, optionally unscaled (GradScaler) and clipped (global norm), in float32
(float64 for float64 tensors)::

    g      <- g * (1 / grad_scale)                (HAS_SCALE; exact for power-of-2 scales)
    g      <- g * min(1, max_norm / (||g|| + 1e-6))  (clipping group; ||g|| from the norm kernel)
    g      <- -g                                  (maximize)
    p      <- p * (1 - lr * wd)                   (decoupled weight decay: AdamW)
    g      <- g + wd * p                          (L2 weight decay: Adam)
    m      <- lerp(m, g, 1 - beta1)
    v      <- beta2 * v + (1 - beta2) * g * g
    v_max  <- max(v_max, v)                       (amsgrad; the denominator then uses v_max)
    p      <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

as ``torch.optim.Adam(foreach=False)`` computes it. The bias corrections are computed in float64
from the step count (``beta^t = exp(t log beta)``), as torch computes them on the host in Python
floats: in float32, ``1 - 0.999**1`` alone is off by ~1e-5 relative.

GradScaler: when ``found_inf`` is non-zero no program writes anything (parameters, moments and
step counts stay as they were) -- decided here, on the device.

Step counts: every program of a tensor needs the *old* step; the last of them to finish (found
with an atomic per-tensor counter, reset to 0 by that same program) writes the new one, so no
program can read a step another has already advanced.

Bytes per element per step (b = bytes of the dtype): read p, g, m, v and write p, m, v: 7b
(28 B for float32, 14 B for bf16/fp16), the floor for Adam with states in the parameter dtype;
amsgrad adds a read and a write of v_max (+2b). The norm kernel reads g once more (+b) -- the
price of a global norm, which must be complete before any parameter moves. Per program of BLOCK
elements, ~200 B of table entries (L2-resident): under 0.1 B per element.
"""
import triton
import triton.language as tl

from . import adam_table as table
from .common import round_for_store

# The table layout (kernels/adam_table.py, shared with the host), as constexprs for the jit.
T_PARAM = tl.constexpr(table.T_PARAM)
T_GRAD = tl.constexpr(table.T_GRAD)
T_EXP_AVG = tl.constexpr(table.T_EXP_AVG)
T_EXP_AVG_SQ = tl.constexpr(table.T_EXP_AVG_SQ)
T_MAX_EXP_AVG_SQ = tl.constexpr(table.T_MAX_EXP_AVG_SQ)
T_STEP = tl.constexpr(table.T_STEP)
T_NUMEL = tl.constexpr(table.T_NUMEL)
T_FIRST_BLOCK = tl.constexpr(table.T_FIRST_BLOCK)
T_NUM_BLOCKS = tl.constexpr(table.T_NUM_BLOCKS)
T_GROUP = tl.constexpr(table.T_GROUP)
TENSOR_COLS = tl.constexpr(table.TENSOR_COLS)
G_FLAGS = tl.constexpr(table.G_FLAGS)
G_LR_VALUE = tl.constexpr(table.G_LR_VALUE)
G_LR_ADDRESS = tl.constexpr(table.G_LR_ADDRESS)
G_LR_KIND = tl.constexpr(table.G_LR_KIND)
G_BETA1_VALUE = tl.constexpr(table.G_BETA1_VALUE)
G_BETA1_ADDRESS = tl.constexpr(table.G_BETA1_ADDRESS)
G_BETA1_KIND = tl.constexpr(table.G_BETA1_KIND)
G_BETA2_VALUE = tl.constexpr(table.G_BETA2_VALUE)
G_BETA2_ADDRESS = tl.constexpr(table.G_BETA2_ADDRESS)
G_BETA2_KIND = tl.constexpr(table.G_BETA2_KIND)
G_EPS = tl.constexpr(table.G_EPS)
G_WEIGHT_DECAY = tl.constexpr(table.G_WEIGHT_DECAY)
G_MAX_NORM = tl.constexpr(table.G_MAX_NORM)
GROUP_COLS = tl.constexpr(table.GROUP_COLS)
FLAG_AMSGRAD = tl.constexpr(table.FLAG_AMSGRAD)
FLAG_MAXIMIZE = tl.constexpr(table.FLAG_MAXIMIZE)
FLAG_DECOUPLED = tl.constexpr(table.FLAG_DECOUPLED)
FLAG_CLIP = tl.constexpr(table.FLAG_CLIP)
KIND_VALUE = tl.constexpr(table.KIND_VALUE)
KIND_FP32_TENSOR = tl.constexpr(table.KIND_FP32_TENSOR)


# Nested @triton.jit calls cost ~1 ms each in the interpreter, so the kernels below inline what
# a program does once and keep one helper per program (the block update).


@triton.jit
def _tensor_value(address, kind):
    """A float64 hyperparameter read from a 0-dim float32 or float64 tensor."""
    if kind == KIND_FP32_TENSOR:
        value = tl.load(address.to(tl.pointer_type(tl.float32))).to(tl.float64)
    else:
        value = tl.load(address.to(tl.pointer_type(tl.float64)))
    return value


@triton.jit
def _adam_block(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr, offs, numel,
    grad_factor, decay_factor, weight_decay, lerp_weight, beta2, one_minus_beta2, step_size,
    bc2_sqrt, eps, amsgrad, maximize, decoupled,
    DTYPE: tl.constexpr, COMPUTE: tl.constexpr, MASKED: tl.constexpr,
):
    """The update of one block; unmasked (so vectorisable) unless it is a tensor's tail."""
    if MASKED:
        mask = offs < numel
        other = 0.0
    else:
        mask = None
        other = None
    # upcast right after each load: bf16 arithmetic is wrong in the interpreter
    g = tl.load(grad_ptr + offs, mask=mask, other=other).to(COMPUTE) * grad_factor
    p = tl.load(param_ptr + offs, mask=mask, other=other).to(COMPUTE)
    m = tl.load(exp_avg_ptr + offs, mask=mask, other=other).to(COMPUTE)
    v = tl.load(exp_avg_sq_ptr + offs, mask=mask, other=other).to(COMPUTE)
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled:
            p = p * decay_factor
        else:
            g = g + weight_decay * p
    # torch.lerp's two forms, each exact at its end of the weight range
    m = tl.where(lerp_weight < 0.5, m + lerp_weight * (g - m), g - (g - m) * (1.0 - lerp_weight))
    v = v * beta2 + one_minus_beta2 * g * g
    denom_sq = v
    if amsgrad:
        v_max = tl.load(max_exp_avg_sq_ptr + offs, mask=mask, other=other).to(COMPUTE)
        denom_sq = tl.maximum(v_max, v, propagate_nan=tl.PropagateNan.ALL)
        tl.store(max_exp_avg_sq_ptr + offs, round_for_store(denom_sq, DTYPE), mask=mask)
    # correctly rounded sqrt and division (tl.sqrt and `/` are approximate in fp32 on the GPU)
    if COMPUTE == tl.float64:
        p = p - step_size * (m / (tl.sqrt(denom_sq) / bc2_sqrt + eps))
    else:
        p = p - step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(denom_sq), bc2_sqrt) + eps)
    # round to nearest even (the interpreter's own fp32 -> bf16 cast truncates)
    tl.store(param_ptr + offs, round_for_store(p, DTYPE), mask=mask)
    tl.store(exp_avg_ptr + offs, round_for_store(m, DTYPE), mask=mask)
    tl.store(exp_avg_sq_ptr + offs, round_for_store(v, DTYPE), mask=mask)


@triton.jit
def adam_kernel(
    tensor_table_ptr,  # int64 (n_tensors, TENSOR_COLS): see T_* in adam_table.py
    group_table_ptr,  # int64 (n_groups, GROUP_COLS): see G_* in adam_table.py
    block_table_ptr,  # int32 (n_blocks,): the tensor of each program
    counter_ptr,  # int32 (n_tensors,): zeros between launches; finds each tensor's last program
    grad_scale_ptr,  # float32 0-dim GradScaler scale (unused without HAS_SCALE)
    found_inf_ptr,  # float32 0-dim, non-zero: skip the step (unused without HAS_FOUND_INF)
    grad_sumsq_ptr,  # float64 0-dim sum of squares of the clipped gradients (HAS_CLIP)
    DTYPE: tl.constexpr,  # parameter, gradient and state dtype
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    HAS_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    HAS_CLIP: tl.constexpr,  # some group of the launch clips
    ALIGNED: tl.constexpr,  # every address of the launch is 16-byte aligned
    BLOCK: tl.constexpr,
):
    """One Adam/AdamW step for one block of one tensor (the math is in the module docstring)."""
    pid = tl.program_id(0)
    tensor = tl.load(block_table_ptr + pid).to(tl.int64)
    row = tensor_table_ptr + tensor * TENSOR_COLS
    live = True
    if HAS_FOUND_INF:
        live = tl.load(found_inf_ptr) == 0
    if live:
        step_ptr = tl.load(row + T_STEP).to(tl.pointer_type(tl.float32))
        step = tl.load(step_ptr) + 1.0
        group = group_table_ptr + tl.load(row + T_GROUP) * GROUP_COLS
        flags = tl.load(group + G_FLAGS)

        # lr, beta1, beta2: each the table's value or the 0-dim tensor it points to
        lr = tl.load(group + G_LR_VALUE).to(tl.float64, bitcast=True)
        beta1 = tl.load(group + G_BETA1_VALUE).to(tl.float64, bitcast=True)
        beta2 = tl.load(group + G_BETA2_VALUE).to(tl.float64, bitcast=True)
        if tl.load(group + G_LR_KIND) != KIND_VALUE:
            lr = _tensor_value(tl.load(group + G_LR_ADDRESS), tl.load(group + G_LR_KIND))
        if tl.load(group + G_BETA1_KIND) != KIND_VALUE:
            beta1 = _tensor_value(tl.load(group + G_BETA1_ADDRESS), tl.load(group + G_BETA1_KIND))
        if tl.load(group + G_BETA2_KIND) != KIND_VALUE:
            beta2 = _tensor_value(tl.load(group + G_BETA2_ADDRESS), tl.load(group + G_BETA2_KIND))
        # beta ** step in float64, as torch's Python floats: exp(step * log(beta))
        bias_correction1 = 1.0 - tl.exp(step.to(tl.float64) * tl.log(beta1))
        bias_correction2 = 1.0 - tl.exp(step.to(tl.float64) * tl.log(beta2))
        eps = tl.load(group + G_EPS).to(tl.float64, bitcast=True)
        weight_decay = tl.load(group + G_WEIGHT_DECAY).to(tl.float64, bitcast=True)

        grad_factor = tl.full([], 1.0, tl.float64)  # unscale, then clip, as torch does in turn
        if HAS_SCALE:
            grad_factor = 1.0 / tl.load(grad_scale_ptr).to(tl.float64)
        grad_factor = grad_factor.to(COMPUTE)
        if HAS_CLIP:
            if (flags & FLAG_CLIP) != 0:
                max_norm = tl.load(group + G_MAX_NORM).to(tl.float64, bitcast=True).to(COMPUTE)
                norm = tl.sqrt(tl.load(grad_sumsq_ptr)).to(COMPUTE)
                if COMPUTE == tl.float64:
                    coef = max_norm / (norm + 1e-6)
                else:
                    coef = tl.div_rn(max_norm, norm + 1e-6)
                grad_factor = grad_factor * tl.minimum(coef, 1.0, propagate_nan=tl.PropagateNan.ALL)

        param_ptr = tl.load(row + T_PARAM).to(tl.pointer_type(DTYPE))
        grad_ptr = tl.load(row + T_GRAD).to(tl.pointer_type(DTYPE))
        exp_avg_ptr = tl.load(row + T_EXP_AVG).to(tl.pointer_type(DTYPE))
        exp_avg_sq_ptr = tl.load(row + T_EXP_AVG_SQ).to(tl.pointer_type(DTYPE))
        max_exp_avg_sq_ptr = tl.load(row + T_MAX_EXP_AVG_SQ).to(tl.pointer_type(DTYPE))
        if ALIGNED:  # the host checked every address of the launch: 128-bit accesses are safe
            param_ptr = tl.multiple_of(param_ptr, 16)
            grad_ptr = tl.multiple_of(grad_ptr, 16)
            exp_avg_ptr = tl.multiple_of(exp_avg_ptr, 16)
            exp_avg_sq_ptr = tl.multiple_of(exp_avg_sq_ptr, 16)
            max_exp_avg_sq_ptr = tl.multiple_of(max_exp_avg_sq_ptr, 16)
        numel = tl.load(row + T_NUMEL)
        start = (pid - tl.load(row + T_FIRST_BLOCK)).to(tl.int64) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        scalars = (
            grad_factor,
            (1.0 - lr * weight_decay).to(COMPUTE),  # decoupled decay factor
            weight_decay.to(COMPUTE),
            (1.0 - beta1).to(COMPUTE),  # lerp weight
            beta2.to(COMPUTE),
            (1.0 - beta2).to(COMPUTE),  # from float64: 1 - fp32(0.999) is 1e-5 off
            (lr / bias_correction1).to(COMPUTE),  # step size
            tl.sqrt(bias_correction2).to(COMPUTE),
            eps.to(COMPUTE),
            (flags & FLAG_AMSGRAD) != 0,
            (flags & FLAG_MAXIMIZE) != 0,
            (flags & FLAG_DECOUPLED) != 0,
        )
        if start + BLOCK <= numel:
            _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                        offs, numel, *scalars, DTYPE, COMPUTE, False)
        else:
            _adam_block(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
                        offs, numel, *scalars, DTYPE, COMPUTE, True)

        # Every warp of this program has read the old step (barrier) before the counter moves
        # (the atomic releases), so the last program's write of the new step cannot overtake
        # a read (the atomic and the write are made by one thread).
        tl.debug_barrier()
        finished = tl.atomic_add(counter_ptr + tensor, 1)
        if finished == tl.load(row + T_NUM_BLOCKS) - 1:
            tl.store(step_ptr, step)
            tl.store(counter_ptr + tensor, 0)


@triton.jit
def grad_sumsq_kernel(
    tensor_table_ptr,  # as adam_kernel's
    group_table_ptr,
    block_table_ptr,
    grad_scale_ptr,  # float32 0-dim: the norm is of the unscaled gradients (unused w/o HAS_SCALE)
    partials_ptr,  # float64 (n_partials,): one sum of squares per block of the device's launches
    partial_offset,  # this launch's first entry in partials
    n_partials,  # entries of all launches of this pass (the last program sums them all)
    counter_ptr,  # int32 0-dim, 0 between passes
    sumsq_ptr,  # float64 0-dim out: sum of squares of every clipped gradient of the device
    norm_ptr,  # float32 0-dim out: its square root, for logging
    DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    REDUCE_BLOCK: tl.constexpr,
):
    """Sum of squares of the gradients of clipping groups, one partial per block, then summed in
    a fixed order by the last program of the pass (deterministic, and no second launch).

    Squares are summed in COMPUTE precision within a block and in float64 across blocks.
    Bytes: each gradient read once (b per element), plus 8 B of partials per block."""
    pid = tl.program_id(0)
    tensor = tl.load(block_table_ptr + pid).to(tl.int64)
    row = tensor_table_ptr + tensor * TENSOR_COLS
    group = group_table_ptr + tl.load(row + T_GROUP) * GROUP_COLS
    partial = tl.zeros([], tl.float64)
    if (tl.load(group + G_FLAGS) & FLAG_CLIP) != 0:
        numel = tl.load(row + T_NUMEL)
        start = (pid - tl.load(row + T_FIRST_BLOCK)).to(tl.int64) * BLOCK
        offs = start + tl.arange(0, BLOCK)
        grad_ptr = tl.load(row + T_GRAD).to(tl.pointer_type(DTYPE))
        if ALIGNED:
            grad_ptr = tl.multiple_of(grad_ptr, 16)
        if start + BLOCK <= numel:
            g = tl.load(grad_ptr + offs).to(COMPUTE)
        else:
            g = tl.load(grad_ptr + offs, mask=offs < numel, other=0.0).to(COMPUTE)
        if HAS_SCALE:
            g = g * (1.0 / tl.load(grad_scale_ptr).to(tl.float64)).to(COMPUTE)
        partial = tl.sum(g * g, 0).to(tl.float64)
    tl.store(partials_ptr + partial_offset + pid, partial)

    finished = tl.atomic_add(counter_ptr, 1)  # orders the partial's store before the count
    if finished == n_partials - 1:
        acc = tl.zeros([REDUCE_BLOCK], tl.float64)
        for first in range(0, n_partials, REDUCE_BLOCK):
            idx = first + tl.arange(0, REDUCE_BLOCK)
            # .cg: read from L2, where the other programs' partials are, never a stale L1 line
            acc += tl.load(partials_ptr + idx, mask=idx < n_partials, other=0.0,
                           cache_modifier=".cg")
        total = tl.sum(acc, 0)
        tl.store(sumsq_ptr, total)
        tl.store(norm_ptr, tl.sqrt(total).to(tl.float32))
        tl.store(counter_ptr, 0)
