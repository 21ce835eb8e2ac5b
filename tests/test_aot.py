"""Every kernel compiles for sm_80 and sm_90 (no GPU needed), and the streaming kernels keep the
properties their speed relies on: no local memory (spills) and 128-bit global loads/stores in
the specialisation a real launch gets (16-byte aligned pointers, strides divisible by 16).

Runs ``python -m fastgd.aot`` in a subprocess without TRITON_INTERPRET: interpreted kernels
cannot be compiled, and the test session may be interpreting."""
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def reports():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "fastgd.aot", "--json", "--arch", "80", "90"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_every_kernel_compiles_for_sm80_and_sm90(reports):
    from fastgd.aot import all_specs

    names = {spec.name for spec in all_specs()}
    assert names, "no kernels registered"
    for arch in (80, 90):
        assert {r["name"] for r in reports if r["arch"] == arch} == names


def test_hot_kernels_do_not_spill_and_use_128_bit_accesses(reports):
    from fastgd.aot import KernelReport, problems

    found = [f"{r['name']} sm_{r['arch']}: {problem}"
             for r in reports for problem in problems(KernelReport(**r))]
    assert not found, "\n".join(found)
