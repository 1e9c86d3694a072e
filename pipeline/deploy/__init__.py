"""Clinical deployment: DICOM series in, result JSON and DICOM Structured Report out."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
