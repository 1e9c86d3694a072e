"""Where the bundle lives, found the way ``monai.bundle`` finds it for ``sys.path``.

Model-zoo bundles set ``"bundle_root": "."`` and must be run from inside the bundle folder.
``$pipeline.utils.bundle_root.from_argv()`` instead takes the folder above ``configs/`` of the first
``--config_file`` on the command line, so ``python -m monai.bundle run training --config_file
bundles/NAME/configs/train.json`` works from anywhere; it falls back to the working directory
(callers of ``monai.bundle.run`` in-process pass ``bundle_root`` themselves).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Sequence


def _first_config_file(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if value.lstrip().startswith("["):
            try:
                files = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                files = value.strip("[]").split(",")
            value = str(files[0]).strip(" '\"") if files else ""
        return value or None
    return None


def from_argv(argv: Sequence[str] | None = None) -> str:
    """The bundle folder of the first ``--config_file`` in ``argv`` (default ``sys.argv``), else ``"."``."""
    config = _first_config_file(sys.argv if argv is None else argv)
    if config is None:
        return "."
    folder = os.path.dirname(os.path.abspath(config))
    return os.path.dirname(folder) if os.path.basename(folder) == "configs" else folder
