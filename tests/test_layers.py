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
    "sweeps": {"tracking"},
    "verdicts": {"data", "tracking", "sweeps"},
    "pipeline": set(),
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


def violations(path: Path, package: Path = PACKAGE) -> list[str]:
    """How `path` (a module of `package`) breaks the one-way rule; empty when it keeps it."""
    folder = path.relative_to(package).parts[0] if path.parent != package else None
    names, found = imports(path), []
    if {name for name in names if name.split(".")[0] == "ops"}:
        found.append("the library never imports ops/ (not installed)")
    if "mlflow" in {name.split(".")[0] for name in names} and folder != "tracking":
        found.append("only tracking/ imports MLflow")
    if folder is None:  # params, files, project, errors: below every folder; cli dispatches to all
        if path.stem != "cli" and any(
            name.startswith("mnist_mlp.") and name.split(".")[1] in MAY_IMPORT for name in names
        ):
            found.append(f"{path.name} is below every folder and imports one")
        return found
    used = {name.split(".")[1] for name in names if name.startswith("mnist_mlp.") and len(name.split(".")) > 1}
    allowed = MAY_IMPORT[folder] | TOP_LEVEL | {folder}
    if not used <= allowed:
        found.append(f"{folder}/ imports {sorted(used - allowed)}; it may import {sorted(allowed)}")
    return found


@pytest.mark.parametrize("path", library_files(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    assert violations(path) == []


def test_the_rule_sees_each_wrong_way_import(tmp_path):
    (tmp_path / "core").mkdir()
    wrong = {
        "core/model.py": "def f():\n    from mnist_mlp.tracking import runs\n",  # a function-level import counts
        "core/train.py": "import mlflow\n",
        "data/mnist.py": "from ops.server import start\n",
        "params.py": "from mnist_mlp.core.model import MLP\n",
    }
    for name, text in wrong.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
        assert violations(tmp_path / name, tmp_path), name
    (tmp_path / "core" / "evaluate.py").write_text(
        "from mnist_mlp.data.mnist import Split\nfrom mnist_mlp.files import write_csv\n"
    )
    assert violations(tmp_path / "core" / "evaluate.py", tmp_path) == []


def test_the_built_package_ships_the_apps_page_and_no_ops_or_test_support(tmp_path):
    """What `pip install .` gets (not the editable install the tests run on): every file the app serves, and
    nothing from ops/, tests/ or benchmarks/."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root, source = (
        PACKAGE.parents[1],
        tmp_path / "source",
    )  # a copy of the tracked files: no egg-info or build/ of the editable install
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True, capture_output=True, text=True
    )
    for name in listed.stdout.splitlines():
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    page = {
        f"mnist_mlp/{path.relative_to(PACKAGE).as_posix()}" for path in (PACKAGE / "serving" / "app_static").iterdir()
    }
    assert page and page <= shipped, f"the wheel lacks {sorted(page - shipped)}"
    assert not [name for name in shipped if name.split("/")[0] in {"ops", "tests", "benchmarks"}]


def test_the_command_line_only_parses_and_dispatches():
    """cli.py: each subcommand's parser beside its handler, none over 40 lines (logic lives in the library)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    assert {node.name for node in functions if node.end_lineno - node.lineno >= 40} == set()
    handlers = [node.name.removeprefix("cmd_") for node in functions if node.name.startswith("cmd_")]
    parsers = [node.name.removeprefix("add_") for node in functions if node.name.startswith("add_")]
    assert set(handlers) <= set(parsers)  # every handler has its own parser function
    order = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert all(order.index(f"add_{name}") == order.index(f"cmd_{name}") + 1 for name in handlers)  # side by side
