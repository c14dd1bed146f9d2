"""Training that goes wrong: a diverging loss, a failed `dvc repro`, two experiments on one store,
and the audit that every output is written to a temp file and renamed into place."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.cli import run
from support.faults import (
    assert_one_clear_error,
    fresh_store,
    mlflow_runs,
    snapshot,
    stage_command,
    stage_env,
    stage_in_process,
    temp_leftovers,
)
from support.mnist_files import write_checksums, write_tiny_mnist
from support.params import set_train_params, tiny_params
from support.paths import BIN, ROOT

DIVERGING = {"lr": 1e30, "optimizer": "sgd", "momentum": 0.0, "schedule": "none", "epochs": 3}


@pytest.mark.bad_input
def test_a_diverging_loss_stops_at_once_fails_the_run_and_writes_no_model(
    trained_before, empty_mlflow_db, capsys, monkeypatch
):
    uri = fresh_store(empty_mlflow_db, trained_before / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny_params(trained_before / "params.yaml", preprocess={"val_size": 60}, train=DIVERGING)
    before = snapshot(trained_before / "models", trained_before / "reports")
    outcome = stage_in_process("train", [], trained_before, capsys, monkeypatch)
    line = assert_one_clear_error(
        outcome, "train", "loss became nan at epoch 1, step ", "training stopped. Hint: lower train.lr (now 1e+30)"
    )
    assert re.search(r"at epoch 1, step \d+;", line)
    assert "train: epoch" not in outcome.out  # stopped inside the first epoch, not after it
    assert snapshot(trained_before / "models", trained_before / "reports") == before
    assert temp_leftovers(trained_before) == []
    [mlflow_run] = mlflow_runs(uri)
    assert mlflow_run.info.status == "FAILED"
    assert "best_val_accuracy" not in mlflow_run.data.metrics


def _dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], project, check=check)


@pytest.mark.slow
@pytest.mark.fault
def test_a_failed_dvc_repro_keeps_the_previous_model_and_the_next_repro_is_clean(project):
    """`persist: true` on the train outputs: DVC no longer deletes them before the stage runs."""
    _dvc(project, "repro")
    outputs = [project / "models", project / "reports", project / "dvc.lock"]
    before = snapshot(*outputs)

    set_train_params(project, **DIVERGING)
    failed = _dvc(project, "repro", check=False)
    assert failed.returncode != 0
    assert "train: error: loss became nan at epoch 1" in failed.stderr + failed.stdout
    assert snapshot(*outputs) == before, "the failed run changed or deleted an earlier output"
    assert temp_leftovers(project / "models", project / "reports", project / "data") == []

    set_train_params(project, lr=0.01, optimizer="adamw", schedule="onecycle", epochs=2)
    _dvc(project, "repro")
    status = _dvc(project, "status", "--json")
    assert json.loads(status.stdout) == {}
    assert snapshot(project / "models/model.pt") != {
        str(project / "models/model.pt"): before[str(project / "models/model.pt")]
    }
    statuses = sorted(r.info.status for r in mlflow_runs(f"sqlite:///{project.parent / 'store' / 'mlflow.db'}"))
    assert statuses == ["FAILED", "FINISHED", "FINISHED"]


@pytest.mark.slow
@pytest.mark.fault
def test_two_trainings_at_once_on_one_store_both_finish_with_their_metrics(tmp_path, capsys, monkeypatch):
    raw = write_tiny_mnist(tmp_path / "raw", train_count=300, test_count=60, compress=False)
    tiny_params(tmp_path / "params.yaml", preprocess={"val_size": 60}, train={"epochs": 4})
    assert (
        stage_in_process(
            "preprocess", ["--raw", str(raw), "--out", "data/processed"], tmp_path, capsys, monkeypatch
        ).code
        == 0
    )
    # a brand-new store: both processes race to create its schema and the experiment
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    jobs = [
        subprocess.Popen(
            stage_command("train", ["--model", f"models/{name}.pt", "--log", f"reports/{name}.csv"]),
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [job.communicate(timeout=600) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    for mlflow_run in runs:
        assert {"best_val_accuracy", "val_accuracy", "train_loss"} <= set(mlflow_run.data.metrics)
        assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "val_accuracy")] == [1, 2, 3, 4]
    for name in ("a", "b"):
        assert (tmp_path / "models" / f"{name}.pt").is_file()


AUDIT = r"""
import json, os, runpy, sys
root = os.getcwd()
events = []

def hook(event, args):
    if event == "open" and isinstance(args[0], int):  # os.fdopen of an already-open file
        return
    if event == "open" and args[1] and any(flag in str(args[1]) for flag in "wax+"):
        events.append(["write", os.path.abspath(os.fsdecode(args[0]))])
    elif event == "open" and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
        events.append(["write", os.path.abspath(os.fsdecode(args[0]))])
    elif event == "open":
        events.append(["read", os.path.abspath(os.fsdecode(args[0]))])
    elif event == "os.rename":
        events.append(["rename", os.path.abspath(os.fsdecode(args[0])), os.path.abspath(os.fsdecode(args[1]))])

sys.addaudithook(hook)
for script, argv in json.loads(sys.argv[1]):
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
print(json.dumps(events))
"""


@pytest.mark.slow
def test_every_output_of_every_stage_is_written_to_a_temp_file_then_renamed(tmp_path, empty_mlflow_db):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=300, test_count=60)
    write_checksums(mirror, tmp_path / "checksums.yaml")
    tiny_params(tmp_path / "params.yaml", preprocess={"val_size": 60})
    uri = fresh_store(empty_mlflow_db, tmp_path / "store")
    env = stage_env(MNIST_MIRROR=str(mirror), MNIST_CHECKSUMS=str(tmp_path / "checksums.yaml"), MLFLOW_TRACKING_URI=uri)
    plan = [
        [str(ROOT / "stages" / f"{stage}.py"), args]
        for stage, args in (
            ("download", ["--out", "data/raw"]),
            ("preprocess", []),
            ("train", []),
            ("evaluate", []),
        )
    ]
    result = subprocess.run(
        [sys.executable, "-c", AUDIT, json.dumps(plan)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = json.loads(result.stdout[result.stdout.index("[[") :])
    outputs = [p for folder in ("data", "models", "reports") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert len(outputs) >= 4 + 3 + 1 + 5
    renamed_into_place = {e[2] for e in events if e[0] == "rename"}
    for output in outputs:
        assert str(output) in renamed_into_place, f"{output} was not renamed into place"
    for kind, path, *_ in events:
        inside_outputs = any(path.startswith(str(tmp_path / folder) + "/") for folder in ("data", "models", "reports"))
        if kind == "write" and inside_outputs:
            assert re.match(r"^\..+\.tmp$", Path(path).name), f"{path} written in place, not via a temp file"
    assert temp_leftovers(tmp_path / "data", tmp_path / "models", tmp_path / "reports") == []

    # nothing is read outside the work folder (repo, mirror, store), the code and the installed
    # libraries, the system and the libraries' own caches: no ~/.netrc, ~/.ssh, ~/.aws, other repos
    import tempfile

    # (the stages run from this checkout here, so MLflow's git tags read this checkout's .git)
    allowed = [
        str(tmp_path),
        str(ROOT / "src"),
        str(ROOT / "stages"),
        str(ROOT / ".git"),
        sys.prefix,
        sys.base_prefix,
        "/usr/",
        "/lib",
        "/etc/",
        "/proc/",
        "/sys/",
        "/dev/",
        tempfile.gettempdir() + "/",
        str(Path.home() / ".cache"),
        str(Path.home() / ".config" / "matplotlib"),
        str(Path(yaml.__file__).parents[1]),
    ]
    outside = sorted(
        {
            path
            for kind, path, *_ in events
            if kind in ("read", "write")
            and not any(path == root.rstrip("/") or path.startswith(root) for root in allowed)
        }
    )
    assert outside == [], outside
