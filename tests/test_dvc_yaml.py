"""dvc.yaml: each stage lists exactly the project modules it runs, derived from the import graph, so none can drift."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mnist_mlp"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """The mnist_mlp modules a file imports anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mnist_mlp.")}
        elif isinstance(node, ast.ImportFrom) and node.module == "mnist_mlp":
            found |= {f"mnist_mlp.{alias.name}" for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_mlp."):
            found.add(node.module)
    return found


def module_closure(script: Path) -> set[str]:
    """Every project file that runs when `script` runs: its mnist_mlp imports, transitively, and the package's __init__."""
    files, todo = set(), [script]
    while todo:
        for module in imported_modules(todo.pop()):
            path = PACKAGE / f"{module.removeprefix('mnist_mlp.')}.py"
            if path not in files:
                files.add(path)
                todo.append(path)
    return {str(path.relative_to(ROOT)) for path in files | ({PACKAGE / "__init__.py"} if files else set())}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_modules_it_imports(stage):
    spec = STAGES[stage]
    script = next(word for word in spec["cmd"].split() if word.startswith("stages/") and word.endswith(".py"))
    assert spec["cmd"].startswith("sh stages/run.sh ") and "stages/run.sh" in spec["deps"]
    listed = {dep for dep in spec["deps"] if dep.startswith("src/")}
    expected = module_closure(ROOT / script)
    assert script in spec["deps"], f"{stage}: its own script {script} is not a dep"
    assert not expected - listed, f"{stage}: dvc.yaml misses deps {sorted(expected - listed)}: an edit there would re-run nothing"
    assert not listed - expected, f"{stage}: dvc.yaml lists {sorted(listed - expected)}, which the stage never imports"


def test_the_closure_follows_imports_through_the_package(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from mnist_mlp.train import fit\n")
    closure = module_closure(script)
    assert {"src/mnist_mlp/train.py", "src/mnist_mlp/model.py", "src/mnist_mlp/data.py", "src/mnist_mlp/__init__.py"} <= closure
    assert "src/mnist_mlp/tracking.py" not in closure


@pytest.mark.bad_input
def test_a_stage_without_python_on_path_names_the_fix(tmp_path):
    """`.venv/bin/dvc exp run` with the venv inactive, on a system with no `python` command (Debian's default)."""
    result = subprocess.run(["/bin/sh", "stages/run.sh", "stages/train.py"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": str(tmp_path)})  # fmt: skip
    assert result.returncode == 127
    assert result.stderr == ("stage: no `python` on PATH to run stages/train.py: activate the project's venv "
                             "(source .venv/bin/activate) or use `make repro`\n")  # fmt: skip


def test_a_stage_runs_this_checkouts_library_on_the_python_of_path():
    result = subprocess.run(["/bin/sh", "stages/run.sh", "-c", "import mnist_mlp; print(mnist_mlp.__file__)"], cwd=ROOT,
                            capture_output=True, text=True, env={"PATH": str(Path(sys.executable).parent)})  # fmt: skip
    assert result.stdout.strip() == "src/mnist_mlp/__init__.py" or Path(result.stdout.strip()).resolve() == PACKAGE / "__init__.py"
