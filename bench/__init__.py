"""fastgd's benchmarks: every figure side by side with what a user would run instead, in the same
process on the same device, with the bytes (or FLOPs) each case must move stated next to it.

Two ways in:

* ``python -m bench [--quick] [--out DIR] [--suite NAME ...]`` runs the suites and writes one
  results folder: ``results.csv`` / ``results.json`` (long form: one row per kernel x provider x
  mode x dtype x shape x metric, with p20/p50/p80 and the machine), ``results.md`` (the table a
  user reads), ``plot_*.png`` and, without a GPU, ``static_sm90.md`` (the compiler's view of every
  kernel; ``python -m bench.static`` alone).
* ``pytest bench/`` times the same cases with pytest-benchmark (``--benchmark-json``,
  ``pytest-benchmark compare``).
* ``python -m bench.readme`` prints the README's results section from the GPU results committed
  under ``bench/results/`` (or says there are none).

Layout: :mod:`bench.machine` (what we run on), :mod:`bench.traffic` (bytes and FLOPs each case
must move), :mod:`bench.timing` (CUDA events through ``triton.testing.do_bench``, a CPU timer,
copy bandwidth, peak memory), :mod:`bench.case` (one case = inputs + the call to time),
``bench/suites/`` (cross-entropy, optimizer, linear cross-entropy), :mod:`bench.runner`,
:mod:`bench.results` (rows, CSV/JSON), :mod:`bench.table` (markdown), :mod:`bench.plots`,
:mod:`bench.folder` (writes a results folder), :mod:`bench.static` and :mod:`bench.aot` (the
static report: each kernel compiled from its launcher's own argument builder).
"""
