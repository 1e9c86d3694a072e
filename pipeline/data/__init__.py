"""Cohorts and image files: datalists and splits, header checks, the transform-keyed cache."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
