"""Integrations of fastgd with other libraries, built on fastgd's public API only.

Each module here imports its library itself (none is a dependency of fastgd), and nothing under
``fastgd/losses`` or ``fastgd/optim`` knows about them. The user-facing entry points are the
top-level modules that name the library: ``fastgd.transformers`` for Hugging Face transformers.
"""
