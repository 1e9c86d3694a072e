"""Synthetic chest-CT phantoms and cohorts in the MosMedData layout."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
