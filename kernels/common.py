"""Small jit helpers shared by the kernels. Each works the same compiled and interpreted."""
import triton
import triton.language as tl


@triton.jit
def fp32_to_bf16_rne(x):
    """Round float32 to bfloat16, to nearest with ties to even, NaN kept NaN.

    The interpreter's own fp32 -> bf16 cast truncates; this bit-level version is exact in both
    modes: add 0x7FFF plus the lowest kept bit, then drop the low 16 bits."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def round_for_store(x, OUT_DTYPE: tl.constexpr):
    """Cast a float32/float64 value to ``OUT_DTYPE`` with round-to-nearest-even."""
    if OUT_DTYPE == tl.bfloat16:
        return fp32_to_bf16_rne(x.to(tl.float32))
    else:
        return x.to(OUT_DTYPE)


@triton.jit
def tanh(x):
    """tanh without libdevice (absent in the interpreter): 2*sigmoid(2x) - 1, computed from
    exp(-2|x|) so that it never overflows."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def float_arg(hi, lo, COMPUTE: tl.constexpr):
    """A float option passed as ``hi + lo`` (two fp32 scalars: Triton passes Python floats as
    fp32). In float64 math the pair carries ~48 bits of the option; in float32 math ``hi`` is
    the option rounded to fp32, as a plain argument would be."""
    if COMPUTE == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return hi
