"""The package's folders are its architecture: imports run one way between them, MLflow only in tracking/, nothing from ops/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnist_mlp"
# a folder may import itself, the top-level modules (params, files, project, errors) and the folders listed
MAY_IMPORT = {
    "data": set(),
    "core": {"data"},
    "tracking": set(),
    "experiments": {"tracking"},
    "serving": {"data", "core", "tracking"},
}
TOP_LEVEL = {"params", "files", "project", "errors"}


def imports(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def library_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", library_files(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    folder = path.relative_to(PACKAGE).parts[0] if path.parent != PACKAGE else None
    names = imports(path)
    assert not {name for name in names if name.split(".")[0] == "ops"}, "the library never imports ops/ (not installed)"
    if "mlflow" in {name.split(".")[0] for name in names}:
        assert folder == "tracking", "only tracking/ imports MLflow"
    if folder is None:  # params, files, project, errors: below every folder; cli dispatches to all
        if path.stem != "cli":
            assert not any(name.startswith("mnist_mlp.") and name.split(".")[1] in MAY_IMPORT for name in names)
        return
    used = {name.split(".")[1] for name in names if name.startswith("mnist_mlp.") and len(name.split(".")) > 1}
    allowed = MAY_IMPORT[folder] | TOP_LEVEL | {folder}
    assert used <= allowed, f"{folder}/ imports {sorted(used - allowed)}; it may import {sorted(allowed)}"


def test_the_rule_sees_a_wrong_way_import(tmp_path):
    wrong = tmp_path / "model.py"
    wrong.write_text("def f():\n    from mnist_mlp.tracking import runs\n")
    assert "mnist_mlp.tracking.runs" in imports(wrong)
