"""experiments/restore.py from fresh clones: the same bytes as the commit, and a way back that never loses a model.

A build in a clone reproduces the committed hashes of data/processed and models/model.pt (two builds in
folders of other names: no path or temp name inside a file), so the clone's cache holds what the commit
names, and `mnist-mlp restore` after `dvc exp run` brings it back; a clone that never built the commit's
model is refused in one line, with nothing changed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mnist_mlp.experiments.restore import cached_hashes
from support.cli import run
from support.paths import BIN

pytestmark = pytest.mark.integration  # dvc repro and dvc exp run in throwaway git + DVC clones

CACHED = ("data/raw", "data/processed", "models/model.pt")


def locked_md5s(repo: Path) -> dict[str, str]:
    """{output: md5} of every cached output that dvc.lock names."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] in CACHED}


def fresh_clone(project: Path, name: str) -> Path:
    clone = project.parent / name
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    return clone


def dropout(repo: Path) -> float:
    return yaml.safe_load((repo / "params.yaml").read_text())["train"]["dropout"]


@pytest.fixture
def committed(project: Path, tmp_path: Path, empty_mlflow_db: Path) -> dict[str, str]:
    """The project built once and committed with its dvc.lock; its cached outputs' md5s."""
    shutil.copy(empty_mlflow_db, tmp_path / "store" / "mlflow.db")
    run([str(BIN / "dvc"), "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "built"], project)
    return locked_md5s(project)


def test_a_fresh_clone_rebuilds_the_committed_hashes_and_restore_brings_them_back(project, committed):
    clone = fresh_clone(project, "renamed clone")
    run([str(BIN / "dvc"), "repro"], clone)
    assert locked_md5s(clone) == committed  # byte for byte, in a folder of another name
    assert cached_hashes(clone) == cached_hashes(clone, "HEAD") == committed  # what .ci/run compares
    assert set(committed) == set(CACHED)

    run([str(BIN / "dvc"), "exp", "run", "-n", "x", "-S", "train.dropout=0.5"], clone)
    assert dropout(clone) == 0.5 and locked_md5s(clone)["models/model.pt"] != committed["models/model.pt"]

    out = run([str(BIN / "mnist-mlp"), "restore"], clone).stdout
    assert out.startswith("restore: the workspace holds HEAD's params")
    assert dropout(clone) == 0.2 and locked_md5s(clone) == committed
    assert (clone / "models" / "model.pt").is_file()
    assert run([str(BIN / "dvc"), "status", "--json"], clone).stdout.strip() == "{}"
    assert run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"], clone).stdout == ""


@pytest.mark.bad_input
def test_a_commit_whose_model_no_cache_holds_is_refused_and_nothing_changes(project, committed):
    clone = fresh_clone(project, "clone-without-build")
    run([str(BIN / "dvc"), "exp", "run", "-n", "y", "-S", "train.dropout=0.5"], clone)  # never built HEAD's model
    model = clone / "models" / "model.pt"
    before = model.read_bytes(), (clone / "params.yaml").read_text(), (clone / "dvc.lock").read_text()

    refused = subprocess.run([str(BIN / "mnist-mlp"), "restore", "HEAD"], cwd=clone, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"mnist-mlp restore: error: HEAD: models/model.pt (md5 {committed['models/model.pt'][:8]}) in no local cache, "
        "so going back would delete what the workspace holds without restoring it; nothing was changed: "
        "`dvc pull` it from a remote, or `dvc repro` to rebuild it"
    ]  # data/raw and data/processed are the same bytes as the commit's, so the clone's cache has them
    assert (model.read_bytes(), (clone / "params.yaml").read_text(), (clone / "dvc.lock").read_text()) == before

    bad = subprocess.run([str(BIN / "mnist-mlp"), "restore", "no-such-rev"], cwd=clone, capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith(f"mnist-mlp restore: error: no-such-rev: not a commit of {clone}")

    # the premise: DVC's own way back, in the same state, fails only after it has removed the model
    applied = subprocess.run([str(BIN / "dvc"), "exp", "apply", "HEAD"], cwd=clone, capture_output=True, text=True)
    assert applied.returncode != 0 and not model.exists()
    assert "Checkout failed for following targets" in applied.stderr + applied.stdout
