"""Inferers: checkpoint ensembles and test-time augmentation."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
