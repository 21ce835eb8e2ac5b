"""Every kernel compiles for sm_80 and sm_90 (no GPU needed), and the streaming kernels keep the
properties their speed relies on: no local memory (spills) and 128-bit global loads/stores in
the specialisation a real launch gets (16-byte aligned pointers, strides divisible by 16).

The compile runs ``python -m bench.static`` in a subprocess without TRITON_INTERPRET:
interpreted kernels cannot be compiled, and the test session may be interpreting. The specs come
from the launchers' own argument builders; the checks of that derivation run here, in-process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import aot
from fastgd.losses.cross_entropy_ops import RowOptions, forward_call

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "bench.static", "--arch", "80", "90",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=ROOT)
    # exit 1 is a failing property: the tests below name it; anything else is a crash
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    return [entry for arch in (80, 90)
            for entry in json.loads((out / f"static_sm{arch}.json").read_text())]


def test_every_kernel_compiles_for_sm80_and_sm90(reports):
    names = {spec.name for spec in aot.all_specs()}
    # 4 dtypes x (3 CE kernels -- forward, vocabulary-parallel forward, backward -- x 2 option
    # sets + 3 Adam)
    assert len(names) == 36, sorted(names)
    for arch in (80, 90):
        assert {r["name"] for r in reports if r["arch"] == arch} == names
    assert not [r for r in reports if r["error"]], [r["error"] for r in reports if r["error"]]


def test_hot_kernels_do_not_spill_and_use_128_bit_accesses(reports):
    found = [f"{r['name']} sm_{r['arch']}: {problem}" for r in reports for problem in r["problems"]]
    assert not found, "\n".join(found)


def _meta(*shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def test_spec_is_the_launch_as_triton_specialises_it():
    # 4 rows of 50257 classes (GPT-2's vocabulary: odd, so neither it nor the row stride is
    # 16-divisible), from a (4, 50264) buffer whose stride is divisible by 8 but not 16.
    logits = _meta(4, 50264, dtype=torch.bfloat16)[:, :50257]
    ce, lse = _meta(4, dtype=torch.float32), _meta(4, dtype=torch.float32)
    call = forward_call(logits, _meta(4, dtype=torch.int32), None, ce, lse,
                        RowOptions(ignore_index=-100, label_smoothing=0.0, logit_scale=1.0,
                                   softcap=0.0))
    spec = aot.specialise("ce_forward/test", call)
    assert spec.signature["logits_ptr"] == "*bf16" and spec.signature["target_ptr"] == "*i32"
    assert spec.signature["stride_col"] == "constexpr" and spec.constexprs["stride_col"] == 1
    assert spec.signature["stride_row"] == "i32" and spec.signature["n_classes"] == "i32"
    assert spec.signature["logit_scale_hi"] == "fp32"
    assert spec.constexprs["HAS_WEIGHT"] is False and spec.num_warps == call.num_warps
    assert "stride_row" not in spec.aligned and "n_classes" not in spec.aligned
    assert {"logits_ptr", "target_ptr", "ce_ptr", "lse_ptr"} <= set(spec.aligned)
    # the signature is in the kernel's parameter order (the compile attributes index into it)
    assert list(spec.signature) == list(aot.kernel_parameters(call.kernel))


def test_a_builder_that_misses_a_kernel_parameter_is_refused():
    logits = _meta(2, 64, dtype=torch.float32)
    full = forward_call(logits, _meta(2, dtype=torch.int64), None, _meta(2, dtype=torch.float32),
                        _meta(2, dtype=torch.float32), RowOptions(-100, 0.0, 1.0, 0.0))
    broken = full._replace(args={k: v for k, v in full.args.items() if k != "ignore_index"})
    with pytest.raises(TypeError, match="ignore_index"):
        aot.specialise("broken", broken)


def test_import_fastgd_does_not_import_the_aot_tool():
    code = ("import sys, fastgd\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'bench' or m.endswith('aot')]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
