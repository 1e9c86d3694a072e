"""3D chest-CT pneumonia classification on MONAI.

Modules, one concern each:

- data: :mod:`~pipeline.synth` / :mod:`~pipeline.phantom` (synthetic cohorts in the MosMedData layout),
  :mod:`~pipeline.cohort` (cohorts to MONAI datalists and splits), :mod:`~pipeline.imagecheck` (header checks),
  :mod:`~pipeline.plausibility` (is it a chest CT in HU), :mod:`~pipeline.dicom` (series selection, SR output),
  :mod:`~pipeline.persistent_cache` (memory or disk cache keyed on the transforms);
- model and training: :mod:`~pipeline.networks`, :mod:`~pipeline.handlers`, :mod:`~pipeline.checkpoint`,
  :mod:`~pipeline.resume`, :mod:`~pipeline.distributed`, :mod:`~pipeline.threshold`;
- inference and evaluation: :mod:`~pipeline.ensemble`, :mod:`~pipeline.tta`, :mod:`~pipeline.metrics`,
  :mod:`~pipeline.evaluation`, :mod:`~pipeline.report`, :mod:`~pipeline.saliency`, :mod:`~pipeline.cv`,
  :mod:`~pipeline.dicom_infer`;
- plumbing: :mod:`~pipeline.errors`, :mod:`~pipeline.guard`, :mod:`~pipeline.atomic`, :mod:`~pipeline.flags`,
  :mod:`~pipeline.bundle_root`.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import submodules on first use, so ``import pipeline`` then ``pipeline.cohort`` works in bundle configs."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
