"""The benchmark suites. Each module has ``KERNEL``, ``BASELINE`` (the provider a user would use
otherwise; speed-ups are against it) and ``cases(device, size)`` -> a list of
:class:`bench.case.Case` and :class:`bench.case.Skipped` (``size``: "full", "quick" or "tiny")."""
from . import cross_entropy, linear_cross_entropy, optimizer

SUITES = {
    "cross_entropy": cross_entropy,
    "optimizer": optimizer,
    "linear_cross_entropy": linear_cross_entropy,
}

# kernel name (as in result rows) -> the provider speed-ups are measured against
BASELINES = {module.KERNEL: module.BASELINE for module in SUITES.values()}
