"""pipeline/restore.py from fresh clones: the same bytes as the commit, and a way back that never loses a model.

A build in a clone reproduces the committed hashes of data/processed and models/model.pt (two builds in
folders of other names: no path or temp name inside a file), so the clone's cache holds what the commit
names, and `mnist-mlp restore` after `dvc exp run` brings it back; a clone that never built the commit's
model is refused in one line, with nothing changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mnist_mlp.core.machine import cpu_kind
from mnist_mlp.pipeline.restore import cached_hashes, check_committed
from support.cli import run
from support.paths import BIN

pytestmark = pytest.mark.integration  # dvc repro and dvc exp run in throwaway git + DVC clones

CACHED = ("data/raw", "data/processed", "models/model.pt")


def locked_md5s(repo: Path) -> dict[str, str]:
    """{output: md5} of every cached output that dvc.lock names."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] in CACHED
    }


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


def test_a_commit_whose_model_no_cache_holds_is_rebuilt_from_its_params_and_code(project, committed):
    """As on a CPU of another kind than the lock's: HEAD's model is in no cache and no remote, so restore says so
    in one line and rebuilds it; on the lock's own kind (here) the rebuild gives the committed bytes again."""
    clone = fresh_clone(project, "clone-without-build")
    run([str(BIN / "dvc"), "exp", "run", "-n", "y", "-S", "train.dropout=0.5"], clone)  # never built HEAD's model

    out = run([str(BIN / "mnist-mlp"), "restore"], clone).stdout.splitlines()
    assert out[0] == (
        f"restore: HEAD's models/model.pt (md5 {committed['models/model.pt'][:8]}) in no local cache or remote: "
        "rebuilding with `dvc repro` from HEAD's params and code (on another CPU kind than the lock's, other "
        "bytes: docs/reproducibility.md)"
    )
    assert out[-1].startswith("restore: the workspace holds HEAD's params")
    assert dropout(clone) == 0.2 and locked_md5s(clone) == committed
    assert run([str(BIN / "dvc"), "status", "--json"], clone).stdout.strip() == "{}"
    assert run(["git", "status", "--porcelain"], clone).stdout == ""  # the same bytes: the workspace is the commit


@pytest.mark.bad_input
def test_without_rebuild_a_commit_whose_model_no_cache_holds_is_refused_and_nothing_changes(project, committed):
    clone = fresh_clone(project, "clone-without-build")
    run([str(BIN / "dvc"), "exp", "run", "-n", "y", "-S", "train.dropout=0.5"], clone)  # never built HEAD's model
    model = clone / "models" / "model.pt"
    before = model.read_bytes(), (clone / "params.yaml").read_text(), (clone / "dvc.lock").read_text()

    refused = subprocess.run(
        [str(BIN / "mnist-mlp"), "restore", "HEAD", "--no-rebuild"], cwd=clone, capture_output=True, text=True
    )
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


def test_the_committed_check_compares_the_model_only_on_the_cpu_kind_that_made_it(project, committed):
    """.ci/run's check: on the lock's kind the model must match; a record naming another kind excuses the model
    (CPU-dependent) and says so."""
    ok, lines = check_committed(project, "HEAD", cpu_kind())
    assert ok and lines[0].endswith(f"this machine is {cpu_kind()}") and len(lines) == 1 + len(CACHED)

    record = json.loads((project / "reports" / "training_run.json").read_text())
    record["made_by"]["cpu_kind"] = "Other AVX9"
    (project / "reports" / "training_run.json").write_text(json.dumps(record))
    run(["git", "commit", "-qam", "a lock from another CPU kind"], project)
    (project / "models" / "model.pt").write_bytes(b"other bytes")
    run([str(BIN / "dvc"), "commit", "-f", "train"], project)  # the workspace's lock now names other model bytes

    ok, lines = check_committed(project, "HEAD", cpu_kind())
    assert ok and "models/model.pt: committed " in lines[-1] and lines[-1].endswith("another CPU kind (not compared)")
    assert lines[0] == f"HEAD's model was made on Other AVX9; this machine is {cpu_kind()}"
    ok, lines = check_committed(project, "HEAD~1", cpu_kind())  # made on this kind: the model must match
    assert not ok and lines[-1].endswith(": other bytes")
