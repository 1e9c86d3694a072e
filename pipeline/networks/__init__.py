"""3D chest-CT classifiers."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
