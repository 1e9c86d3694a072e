"""Evaluation: metrics with intervals, prediction and metric writers, the HTML report, Grad-CAM, CV."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
