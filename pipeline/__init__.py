"""3D chest-CT pneumonia classification on MONAI.

Modules, one concern each:

- :mod:`pipeline.errors`: the error types every entry point reports to users.
- :mod:`pipeline.synth` / :mod:`pipeline.phantom`: synthetic chest-CT cohorts in the MosMedData layout.
- :mod:`pipeline.cohort`: cohorts (MosMedData, two-folder, labelled folders) to MONAI datalists and splits.
- :mod:`pipeline.imagecheck`: header checks that refuse bad images before they are loaded.
- :mod:`pipeline.networks`: the tutorial's 3D CNN and the default classifier.
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
