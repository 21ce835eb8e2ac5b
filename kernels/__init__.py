"""fastgd's Triton kernels (installed as ``fastgd.kernels``): only ``@triton.jit`` code.

No autograd, no device queries, no launch decisions: those live in ``fastgd``.

This folder sits at the top of the repository, so wherever the checkout itself is on ``sys.path``
(Python started in its root, ``python setup.py``, ``python -m pytest``) Python also finds it as a
top-level package ``kernels`` -- a name that belongs to a PyPI project, which transformers imports
and whose setuptools plugin every ``egg_info`` loads. Imported under that name, this file hands
over to whatever ``kernels`` the rest of ``sys.path`` provides, or, where there is none, leaves an
empty namespace package (what a stray folder without ``__init__.py`` gives, without our modules),
which is what packaging probes such as transformers' treat as "not installed".
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    def _is_this_checkout(entry: str) -> bool:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            return os.path.samefile(entry or os.curdir, root)
        except OSError:  # not a folder: a zip file, an editable install's path-hook placeholder
            return False

    def _other_kernels_spec() -> "importlib.machinery.ModuleSpec | None":
        del sys.modules["kernels"]  # so that find_spec searches instead of returning this module
        saved = sys.path[:]
        sys.path[:] = [entry for entry in saved if not _is_this_checkout(entry)]
        try:
            spec = importlib.util.find_spec("kernels")
        finally:
            sys.path[:] = saved
        if spec is not None and spec.origin and os.path.isfile(spec.origin) and (
                os.path.samefile(spec.origin, __file__)):
            return None  # this file again, by a path the filter did not recognise
        return spec

    def _hand_over() -> None:
        spec = _other_kernels_spec()
        if spec is None:
            spec = importlib.machinery.ModuleSpec("kernels", None, is_package=True)
            spec.submodule_search_locations = []
        module = importlib.util.module_from_spec(spec)
        # The import system returns whatever sys.modules holds once this file has run.
        sys.modules["kernels"] = module
        if spec.loader is not None:
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop("kernels", None)
                raise

    _hand_over()
