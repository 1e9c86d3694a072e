"""MONAI transforms of this project, array and dictionary versions side by side."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
