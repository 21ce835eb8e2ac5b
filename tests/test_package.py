"""Packaging: ``kernels/`` is importable only as ``fastgd.kernels`` (never as a top-level
``kernels``, not even from the repository root, where the PyPI project of that name must win);
the sdist builds beside that project's setuptools plugin and installs; the wheel holds every
package of the source tree, the license and ``py.typed``; and fastgd imports and runs its PyTorch
path without the interpreter."""
import email
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import fastgd

ROOT = Path(__file__).resolve().parents[1]
# What a copy of the source tree leaves out: version control, environments, build and run outputs.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".benchmarks", "out", "fastgd-demo", ".whl",
                                    ".gl")


def _run(args, cwd="/", pythonpath=None, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _run_code(code: str, cwd="/", pythonpath=None) -> subprocess.CompletedProcess:
    # By default from another directory, so the checkout itself is not on sys.path: what a user sees.
    return _run(["-c", textwrap.dedent(code)], cwd=cwd, pythonpath=pythonpath)


def _assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def _stand_in_kernels(folder: Path) -> Path:
    """An installed stand-in for the PyPI ``kernels`` (which transformers 5 requires): a package
    with ``CUDAProperties`` and, like the real one, an ``egg_info.writers`` setuptools plugin in
    ``kernels._internals`` -- the plugin every ``setup.py sdist`` loads."""
    (folder / "kernels" / "_internals").mkdir(parents=True)
    (folder / "kernels" / "__init__.py").write_text("class CUDAProperties:\n    pass\n")
    (folder / "kernels" / "_internals" / "__init__.py").write_text("")
    (folder / "kernels" / "_internals" / "locking.py").write_text(
        "def write_egg_lockfile(cmd, basename, filename):\n    pass\n")
    info = folder / "kernels-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(
        "[egg_info.writers]\nkernels.lock = kernels._internals.locking:write_egg_lockfile\n")
    return folder


def _no_kernels_distribution() -> bool:
    import importlib.metadata
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def test_kernels_install_as_fastgd_kernels_only():
    # Away from the checkout, "kernels" is nothing of fastgd's (it may be the other project).
    _assert_ok(_run_code(f"""
        import importlib.util, os, fastgd.kernels.cross_entropy
        spec = importlib.util.find_spec("kernels")
        # (the other project may be installed, in a virtual environment inside the checkout)
        assert spec is None or not (spec.origin or "").startswith(
            {str(ROOT / "kernels") + os.sep!r}), spec
        print("ok")
    """))


# The checkout reaches sys.path as '' (python -c / the REPL in its root) or as an absolute path
# (python setup.py, python -m, pytest's rootdir), each before the other project's site folder.
@pytest.mark.parametrize("checkout_entry", ["cwd", "path"])
def test_top_level_kernels_from_the_checkout_is_the_other_project(tmp_path, checkout_entry):
    stand_in = _stand_in_kernels(tmp_path / "site")
    cwd, pythonpath = (ROOT, [stand_in]) if checkout_entry == "cwd" else ("/", [ROOT, stand_in])
    _assert_ok(_run_code(f"""
        import importlib.metadata, os, sys
        import kernels
        assert kernels.__file__.startswith({str(stand_in)!r}), kernels.__file__
        from kernels import CUDAProperties   # what transformers' LlamaForCausalLM needs
        import kernels._internals.locking     # what setuptools' egg_info loads
        assert importlib.metadata.version("kernels") == "0.0.0"
        import fastgd.kernels.adam, fastgd.kernels.common, fastgd.kernels.cross_entropy
        assert fastgd.kernels.adam.adam_kernel and sys.modules["kernels"] is kernels
        print("ok")
    """, cwd=cwd, pythonpath=pythonpath))


@pytest.mark.skipif(not _no_kernels_distribution(), reason="a kernels distribution is installed")
def test_top_level_kernels_from_the_checkout_alone_is_empty():
    # Without another kernels, the name gives what a stray folder without __init__.py gives, but
    # empty: no file, no version, no submodules (none of fastgd's kernels). Transformers 5's
    # _is_package_available imports a package it finds no metadata for and takes "no version and
    # no __file__" as "a namespace package shadowing on sys.path, not a real install".
    _assert_ok(_run_code("""
        import importlib, importlib.metadata, importlib.util
        assert importlib.util.find_spec("kernels") is not None   # the folder is still seen ...
        try:
            importlib.metadata.version("kernels")
            raise AssertionError("kernels has metadata")
        except importlib.metadata.PackageNotFoundError:
            pass
        kernels = importlib.import_module("kernels")               # ... but holds nothing
        assert getattr(kernels, "__file__", None) is None and not hasattr(kernels, "__version__")
        assert list(kernels.__path__) == [] and not hasattr(kernels, "adam")
        for name in ("kernels.adam", "kernels.common", "kernels.cross_entropy"):
            try:
                importlib.import_module(name)
                raise AssertionError(name + " is importable")
            except ModuleNotFoundError:
                pass
        import fastgd.kernels.adam
        assert fastgd.kernels.adam.adam_kernel
        print("ok")
    """, cwd=ROOT))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist -> wheel -> installed folder, from a copy of the source tree (builds write
    ``*.egg-info`` and ``build/`` beside the sources), with the other kernels project installed."""
    tmp = tmp_path_factory.mktemp("package")
    tree = tmp / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_SOURCE)
    stand_in = _stand_in_kernels(tmp / "stand_in")
    # `python setup.py` puts the tree first on sys.path, and egg_info loads the other project's
    # plugin (kernels._internals.locking): the way the top-level folder used to break the sdist.
    proc = _run(["setup.py", "-q", "sdist", "-d", str(tmp / "dist")], cwd=tree,
                pythonpath=[stand_in])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = (tmp / "dist").glob("fastgd-*.tar.gz")
    proc = _run(["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 str(sdist), "-w", str(tmp / "wheel")], cwd=tmp, pythonpath=[stand_in])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp / "wheel").glob("fastgd-*.whl")
    proc = _run(["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                 str(tmp / "site"), str(wheel)], cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"tree": tree, "sdist": sdist, "wheel": wheel, "site": tmp / "site"}


def _dist_info(names) -> str:
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    return meta.split("/")[0]


def _python_folders(top: Path) -> list[Path]:
    return sorted({p.parent for p in top.rglob("*.py") if "__pycache__" not in p.parts})


def test_sdist_holds_the_sources_license_and_tests(built):
    with tarfile.open(built["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tree = built["tree"]
    expected = {"LICENSE", "README.md", "setup.py", "pyproject.toml", "MANIFEST.in"}
    for folder in ("fastgd", "kernels", "tests", "bench"):
        expected |= {p.relative_to(tree).as_posix() for p in (tree / folder).rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_holds_every_package_of_the_source_tree(built):
    tree = built["tree"]
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())

    def installed(path: Path) -> str:
        rel = path.relative_to(tree).as_posix()
        return "fastgd/kernels" + rel[len("kernels"):] if rel.startswith("kernels") else rel

    folders = _python_folders(tree / "fastgd") + _python_folders(tree / "kernels")
    for folder in folders:
        assert (folder / "__init__.py").is_file(), f"{folder} is not a package (no __init__.py)"
    modules = {installed(p) for f in folders for p in f.glob("*.py")}
    assert "fastgd/kernels/adam.py" in modules and "fastgd/demo/__init__.py" in modules
    assert modules <= names, sorted(modules - names)
    assert "fastgd/py.typed" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fastgd", _dist_info(names)}, tops   # no kernels/, bench/, tests/


def test_wheel_metadata_license(built):
    with zipfile.ZipFile(built["wheel"]) as whl:
        info = _dist_info(whl.namelist())
        meta = email.message_from_bytes(whl.read(f"{info}/METADATA"))
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    # setup.py reads the version from fastgd/_version.py: the wheel says what fastgd says.
    assert meta["Version"] == fastgd.__version__
    assert license_text.startswith("MIT License")
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]   # superseded by PEP 639


def test_installed_wheel_provides_fastgd_kernels(built):
    site = str(built["site"])
    _assert_ok(_run_code(f"""
        import importlib.util
        import fastgd, fastgd.kernels.adam, fastgd.kernels.common, fastgd.kernels.cross_entropy
        for module in (fastgd, fastgd.kernels.adam, fastgd.kernels.common,
                       fastgd.kernels.cross_entropy):
            assert module.__file__.startswith({site!r}), module.__file__
        spec = importlib.util.find_spec("kernels")  # none, or the other project's (transformers')
        assert spec is None or not (spec.origin or "").startswith({site!r}), (
            "the wheel installs a top-level kernels module")
        print("ok")
    """, pythonpath=[site]))


def test_cpu_without_interpreter_uses_torch_path_with_same_result():
    _assert_ok(_run_code("""
        import torch, torch.nn.functional as F, fastgd
        x = torch.randn(4, 33, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([1, 5, -100, 32])
        assert fastgd.backend.backend_for(x) == "torch"
        loss = fastgd.cross_entropy(x, t, label_smoothing=0.1)
        loss.backward()
        y = x.detach().clone().requires_grad_()
        F.cross_entropy(y, t, label_smoothing=0.1).backward()
        torch.testing.assert_close(loss, F.cross_entropy(y.detach(), t, label_smoothing=0.1))
        torch.testing.assert_close(x.grad, y.grad)
        print("ok")
    """))
