"""fastgd: Triton kernels for cross-entropy over large vocabularies and for Adam/AdamW.

Every package under ``fastgd/`` is found by ``find_packages`` (a new subpackage needs no edit
here); the repository's top-level ``kernels/`` folder is installed as ``fastgd.kernels``. There is
no top-level ``kernels`` module: that name belongs to another PyPI project, and
``kernels/__init__.py`` hands the name over to it when the checkout is on ``sys.path``.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# The version lives in fastgd/_version.py only; reading it as text keeps torch out of the build.
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "fastgd" / "_version.py").read_text(
    encoding="utf-8"), re.MULTILINE).group(1)

setup(
    name="fastgd",
    version=VERSION,
    description="Triton kernels for the loss and the optimizer step of LLM training",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license_expression="MIT",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: GPU :: NVIDIA CUDA",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    keywords=["triton", "cross-entropy", "adamw", "optimizer", "pytorch", "llm"],
    packages=[*find_packages(include=["fastgd", "fastgd.*"]), "fastgd.kernels"],
    package_dir={"fastgd.kernels": "kernels"},
    # PEP 561: the inline annotations of fastgd (and fastgd.kernels) are its public types.
    package_data={"fastgd": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11",
        "numpy",
        # Triton ships Linux wheels only; elsewhere fastgd runs its PyTorch path.
        "triton>=3.6; platform_system == 'Linux'",
    ],
    extras_require={
        # The demo's progress bar and plot; fastgd itself never imports them.
        "demo": ["matplotlib>=3.7", "tqdm>=4.60"],
        # fastgd.transformers (the only module that imports it); tested with 4.57.6 and 5.25.
        "hf": ["transformers>=4.57"],
        # The demo's tests check the plot it writes and its progress bar; the packaging tests
        # build the sdist and the wheel with the environment's own setuptools; the Hugging Face
        # tests run transformers' Trainer, which needs accelerate.
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "matplotlib>=3.7",
                 "tqdm>=4.60", "setuptools>=77", "transformers>=4.57", "accelerate>=1.1"],
    },
    entry_points={"console_scripts": ["fastgd = fastgd.demo.cli:fastgd_command"]},
)
