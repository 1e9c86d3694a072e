"""Command-line entry point: ``python -m pipeline COMMAND ...``.

Each command lives in the module named for what it does; the module exposes
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported lazily so
that a command pays only for what it uses.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.utils.errors import InputError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipeline.synth.generate", "generate a synthetic chest-CT cohort in the MosMedData layout"),
    "datalist": ("pipeline.data.cohort", "turn a cohort folder into a MONAI datalist JSON with splits"),
    "report": ("pipeline.evaluation.report", "metrics with confidence intervals and a self-contained HTML report"),
    "infer": ("pipeline.deploy.infer", "classify the axial CT series of a DICOM study; write JSON and a DICOM SR"),
    "cv-summary": ("pipeline.evaluation.cv", "mean and sd of each metric over the folds of a cross-validation"),
    "ensemble-threshold": (
        "pipeline.engine.threshold",
        "choose an ensemble's operating threshold on the ensemble's own validation predictions",
    ),
    "migrate-checkpoint": (
        "pipeline.engine.checkpoint",
        "split a one-file checkpoint (weights + record) into plain weights and their model.json",
    ),
    "realism": (
        "pipeline.synth.realism",
        "compare synthetic and real chest CTs: lung HU, texture, vessels, noise, shape, lesions",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; bad input exits with status 2 and a one-line reason."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
