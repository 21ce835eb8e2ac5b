"""fastgd's Triton kernels (installed as ``fastgd.kernels``): only ``@triton.jit`` code.

No autograd, no device queries, no launch decisions: those live in ``fastgd``.
"""
