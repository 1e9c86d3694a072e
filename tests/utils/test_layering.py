"""Plumbing stays below its users: ``pipeline.utils`` imports nothing of the package above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parents[2] / "pipeline" / "utils"


def pipeline_imports(path: Path) -> set[str]:
    """The ``pipeline`` modules ``path`` imports, at the top or inside functions (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
    return found


@pytest.mark.parametrize("module", sorted(p.name for p in UTILS.glob("*.py") if p.name != "__init__.py"))
def test_utils_import_only_utils(module: str) -> None:
    above = sorted(m for m in pipeline_imports(UTILS / module) if not m.startswith("pipeline.utils"))
    assert not above, f"pipeline/utils/{module} reaches up into {above}"


def test_the_check_sees_lazy_imports(tmp_path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pipeline.evaluation.writer import PredictionWriter\n")
    assert pipeline_imports(source) == {"pipeline.evaluation.writer"}
