"""`dvc status` after an edit: code that only queries, the registry or the app use retrains nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def stage_status(project: Path) -> dict:
    """{stage: what DVC reports changed}, from `dvc status --json` (stages with nothing changed are absent)."""
    result = subprocess.run([DVC, "status", "--json"], cwd=project, capture_output=True, text=True, check=True)
    return {
        name: entry for name, entry in json.loads(result.stdout or "{}").items() if not name.startswith("dvc.yaml:")
    }


@pytest.fixture
def project(tmp_path) -> Path:
    """This checkout's pipeline files and code (not its data) in a DVC project of their own."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    for folder in ("src", "stages"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=project, check=True)
    # a stand-in for every output, committed as it is: dvc.lock then records this code, and status is clean
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
    deps = {dep for stage in stages for dep in stage["deps"]}
    for stage in stages:
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            out = project / (entry if isinstance(entry, str) else next(iter(entry)))
            inside = [project / dep for dep in deps if dep.startswith(f"{out.relative_to(project)}/")]
            # a folder output holds the files later stages read (data/processed/train.pt), or one file (data/raw)
            for path in inside or ([out] if out.suffix else [out / "file"]):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("stand-in\n")
    subprocess.run([DVC, "commit", "--force", "-q"], cwd=project, check=True)
    assert stage_status(project) == {}
    return project


def edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


@pytest.mark.integration
def test_editing_query_or_registry_code_leaves_the_train_stage_unchanged(project):
    edit(project / "src/mnist_mlp/tracking/queries.py")  # the app's and compare's queries
    edit(project / "src/mnist_mlp/tracking/loading.py")  # model loading for predict, app, serve
    edit(project / "src/mnist_mlp/serving/app.py")
    assert stage_status(project) == {}
    edit(project / "src/mnist_mlp/tracking/registry.py")  # the evaluate stage registers; training does not
    assert list(stage_status(project)) == ["evaluate"]
    edit(project / "src/mnist_mlp/core/train.py")  # the check itself can fail: training code does retrain
    assert stage_status(project)["train"] == [{"changed deps": {"src/mnist_mlp/core/train.py": "modified"}}]
