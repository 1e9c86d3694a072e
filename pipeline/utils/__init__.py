"""Plumbing: input errors and the exit-code guard, atomic writes, boolean flags, the bundle root."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
