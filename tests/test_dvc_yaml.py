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


def module_file(module: str) -> Path | None:
    """mnist_mlp.a.b -> src/mnist_mlp/a/b.py, or its package's __init__.py; None for a name that is not a module."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The mnist_mlp modules a file imports anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("mnist_mlp.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mnist_mlp":
            found.add(node.module)  # `from mnist_mlp.core import train`: the package and its module train
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
            }
    return found


def module_closure(script: Path) -> set[str]:
    """Every project file that runs when `script` runs: its mnist_mlp imports, transitively, with every
    package's __init__.py on the way (importing mnist_mlp.core.train runs mnist_mlp/__init__.py and core/__init__.py)."""
    files, todo = set(), [script]
    while todo:
        for module in imported_modules(todo.pop()):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                path = module_file(".".join(parts[:depth]))
                if path is not None and path not in files:
                    files.add(path)
                    todo.append(path)
    return {str(path.relative_to(ROOT)) for path in files}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_the_modules_it_imports(stage):
    spec = STAGES[stage]
    script = next(word for word in spec["cmd"].split() if word.startswith("stages/") and word.endswith(".py"))
    assert spec["cmd"].startswith("sh stages/run.sh ") and "stages/run.sh" in spec["deps"]
    listed = {dep for dep in spec["deps"] if dep.startswith("src/")}
    expected = module_closure(ROOT / script)
    assert script in spec["deps"], f"{stage}: its own script {script} is not a dep"
    assert not expected - listed, (
        f"{stage}: dvc.yaml misses deps {sorted(expected - listed)}: an edit there would re-run nothing"
    )
    assert not listed - expected, f"{stage}: dvc.yaml lists {sorted(listed - expected)}, which the stage never imports"


def test_the_closure_follows_imports_through_the_package(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from mnist_mlp.core.train import fit\n")
    closure = module_closure(script)
    assert {
        "src/mnist_mlp/core/train.py",
        "src/mnist_mlp/core/model.py",
        "src/mnist_mlp/data/mnist.py",
        "src/mnist_mlp/__init__.py",
        "src/mnist_mlp/core/__init__.py",
        "src/mnist_mlp/data/__init__.py",
    } <= closure
    assert not any(path.startswith("src/mnist_mlp/tracking/") for path in closure)


@pytest.mark.bad_input
def test_a_stage_without_python_on_path_names_the_fix(tmp_path):
    """`.venv/bin/dvc exp run` with the venv inactive, on a system with no `python` command (Debian's default)."""
    result = subprocess.run(
        ["/bin/sh", "stages/run.sh", "stages/train.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert result.returncode == 127
    assert result.stderr == (
        "stage: no `python` on PATH to run stages/train.py: activate the project's venv "
        "(source .venv/bin/activate) or use `make repro`\n"
    )


def test_a_stage_runs_this_checkouts_library_on_the_python_of_path():
    result = subprocess.run(
        ["/bin/sh", "stages/run.sh", "-c", "import mnist_mlp; print(mnist_mlp.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert (
        result.stdout.strip() == "src/mnist_mlp/__init__.py"
        or Path(result.stdout.strip()).resolve() == PACKAGE / "__init__.py"
    )
