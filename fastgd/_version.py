"""The release number, in one place: ``setup.py`` reads it from this file without importing fastgd
(which would import torch at build time)."""
__version__ = "0.1.0"
