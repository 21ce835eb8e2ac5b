"""The static report's verdicts and rendering, on fabricated compiler reports (tests/test_aot.py
compiles the real kernels and checks them; this checks the report that shows the result)."""
from bench import static
from bench.aot import KernelReport


def report(**changes) -> KernelReport:
    fields = dict(name="ce_backward/bf16", arch=90, registers=32, stack=0, local=0, shared=0,
                  widest_load_bits=128, widest_store_bits=128, streams_stores=True)
    fields.update(changes)
    return KernelReport(**fields)


def result(**changes) -> static.StaticResult:
    return static.StaticResult("ce_backward/bf16", 90, 8, {"BLOCK": 4096}, report(**changes))


def test_a_vectorised_spill_free_kernel_passes():
    assert static.problems(result()) == []
    # a per-row result may be stored narrow, but its loads still stream
    assert static.problems(result(widest_store_bits=32, streams_stores=False)) == []
    assert static.problems(result(widest_load_bits=16, streams_stores=False)) == [
        "widest load 16-bit, not 128"]


def test_what_breaks_the_streaming_properties_is_named():
    assert static.problems(result(local=64)) == ["local memory 64 B, stack 0 B (spills)"]
    assert static.problems(result(widest_load_bits=16)) == ["widest load 16-bit, not 128"]
    assert static.problems(result(widest_store_bits=64)) == ["widest store 64-bit, not 128"]
    broken = static.StaticResult("adam/fp32", 90, 8, {}, None, "CompilationError: bad tile")
    assert static.problems(broken) == ["does not compile: CompilationError: bad tile"]


def test_render_shows_each_kernel_and_the_verdict():
    good = static.render([result()], 90, "triton x")
    assert "| ce_backward/bf16 | 8 | 32 | 0/0 | 0 | 128-bit | 128-bit | streamed | ok |" in good
    assert "every check holds" in good
    bad = static.render([result(), result(widest_load_bits=32)], 90, "triton x")
    assert "**widest load 32-bit, not 128**" in bad and "2 kernels, 1 failing a check." in bad
    entry = static.to_json([result(local=8)])[0]
    assert entry["problems"] == ["local memory 8 B, stack 0 B (spills)"]
    assert entry["registers"] == 32 and entry["constexprs"] == {"BLOCK": 4096}


def test_refuses_to_run_interpreted(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert static.main([]) == 2
    assert "unset TRITON_INTERPRET" in capsys.readouterr().err
