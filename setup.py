"""fastgd: Triton kernels for cross-entropy over large vocabularies and for Adam/AdamW.

The repository's top-level ``kernels/`` folder is installed as ``fastgd.kernels``; there is no
top-level ``kernels`` module (that name belongs to another PyPI project).
"""
from setuptools import setup

setup(
    name="fastgd",
    version="0.1.0",
    description="Triton kernels for the loss and the optimizer step of LLM training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["fastgd", "fastgd.demo", "fastgd.kernels"],
    package_dir={"fastgd": "fastgd", "fastgd.kernels": "kernels"},
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
        # The demo's tests check the plot it writes and its progress bar.
        "test": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6", "matplotlib>=3.7",
                 "tqdm>=4.60"],
    },
    entry_points={"console_scripts": ["fastgd = fastgd.demo.cli:fastgd_command"]},
)
