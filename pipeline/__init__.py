"""3D chest-CT pneumonia classification on MONAI.

Sub-packages, one concern each (bundle configs reach every module as ``pipeline.<package>.<module>``):

- :mod:`pipeline.data`: cohorts to MONAI datalists and splits (``cohort``), header checks of image files
  (``imagecheck``), the memory or disk cache keyed on the transforms (``cache``), the class-balanced sampler of
  datasets filled when a run starts (``sampler``), batches that go on past refused studies (``refusal``);
- :mod:`pipeline.transforms`: MONAI transforms (array and dictionary pairs): the one deterministic chain
  (``chain``), the lung mask (``lung``), anti-aliased resampling (``spatial``), training augmentation (``augment``),
  is it a chest CT in HU (``plausibility``), lung involvement and the MosMed category from a lesion map
  (``severity``);
- :mod:`pipeline.synth`: synthetic chest-CT phantoms (``phantom``), cohorts in the MosMedData layout
  (``generate``), the realism report against real chest CT (``realism``);
- :mod:`pipeline.networks`: the 3D networks, the multi-task default and the classifiers (``nets``);
- :mod:`pipeline.engine`: what trains and validates around MONAI's engines: handlers and batch helpers
  (``handlers``), atomic checkpoints (``checkpoint``), resumable runs (``resume``), torchrun
  (``distributed``), the operating threshold (``threshold``), the preprocessing record (``record``), model
  selection and the learning-rate schedule (``selection``), the multi-task loss (``multitask``);
- :mod:`pipeline.inferers`: checkpoint ensembles (``ensemble``), test-time augmentation (``tta``);
- :mod:`pipeline.evaluation`: metrics with intervals (``metrics``), the writers behind an evaluation run
  (``writer``), the HTML report (``report``), Grad-CAM (``saliency``), cross-validation summaries (``cv``);
- :mod:`pipeline.deploy`: DICOM in, the series to classify (``series``), DICOM out, result JSON and Structured
  Report (``sr``), the bundle run behind them and MONAI Label (``bundle``), volumes written as (compressed) CT
  series (``export``), ``python -m pipeline infer`` (``infer``);
- :mod:`pipeline.utils`: errors and the exit-code guard, atomic writes, boolean flags, the bundle root.
"""

__version__ = "0.1.0"


def lazy_submodules(package: str):
    """A module ``__getattr__`` importing ``package.<name>`` on first use (so ``pipeline.data.cohort`` works)."""
    import importlib

    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


__getattr__ = lazy_submodules(__name__)
