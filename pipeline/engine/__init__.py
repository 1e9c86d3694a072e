"""Training and validation around MONAI's engines: handlers, checkpoints, resume, torchrun, threshold."""

from pipeline import lazy_submodules

__getattr__ = lazy_submodules(__name__)
