#!/usr/bin/env bash
# The one-call GPU check, for the lent GPU machine (no network; Python 3.12, torch 2.11 and
# triton 3.6 preinstalled): runs the whole test suite compiled on CUDA, then the quick
# benchmarks when bench/ provides them, writing logs and results into $OUT (or the folder given
# as the first argument). Budgeted to finish well inside 8 minutes, compilation included.
#
#   bash bench/gpu_check.sh            # writes into $OUT, else bench/out/
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${OUT:-$repo/bench/out}}"
mkdir -p "$out"
cd "$repo"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')"
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  python3 -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
} | tee "$out/environment.txt"

# Install without the network (setuptools is there); kernels/ becomes fastgd.kernels.
if ! python3 -m pip install --quiet --no-deps --no-build-isolation --no-index -e . > "$out/install.log" 2>&1; then
  echo "pip install failed (see install.log); using a copied package on PYTHONPATH" | tee -a "$out/install.log"
  site="$(mktemp -d)"; cp -r fastgd "$site/fastgd"; cp -r kernels "$site/fastgd/kernels"
  # The copy must win over the checkout's own fastgd/ (which has no kernels/ inside): no
  # implicit current directory on sys.path, the checkout after the copy for bench/.
  export PYTHONSAFEPATH=1 PYTHONPATH="$site:$repo"
fi

status=0
# Tests: compiled on CUDA (conftest.py only turns the interpreter on without a GPU).
timeout 300 python3 -m pytest tests -q -ra --durations=15 --junitxml="$out/tests.xml" \
  2>&1 | tee "$out/tests.log" || status=1

# Quick benchmarks (budgeted inside the 120 s: cases stop starting after 95 s), into
# $out/<gpu>_<date>_<commit>/ -- the folder to commit under bench/results/ as it is.
if [ -f bench/__main__.py ]; then
  timeout 120 python3 -m bench --quick --out-parent "$out" 2>&1 | tee "$out/bench.log" || status=1
fi
# Host time of step() on FSDP2 parameters (one NCCL rank: the host work is per rank).
timeout 60 python3 -m bench.fsdp_host_time --ranks 1 --steps 10 > "$out/fsdp_host_time.md" 2>&1 || status=1
echo "gpu_check: exit $status" | tee -a "$out/environment.txt"
exit $status
