"""The whole DVC pipeline in a throwaway git+DVC project: repro, experiments, metrics, plots, MLflow."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest

from support.cli import run
from support.paths import BIN

DVC = str(BIN / "dvc")

pytestmark = pytest.mark.integration  # dvc repro, dvc exp run: subprocesses in a throwaway git + DVC project


@pytest.fixture
def store(project: Path, empty_mlflow_db: Path) -> mlflow.MlflowClient:
    """The project's MLflow store, created up front from a migrated copy (a migration takes 10+ s)."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    shutil.copy(empty_mlflow_db, uri.removeprefix("sqlite:///"))
    return mlflow.MlflowClient(uri)


def dvc(project: Path, *args: str) -> str:
    return run([DVC, *args], project).stdout


def finished_runs(client: mlflow.MlflowClient) -> list:
    experiment = client.get_experiment_by_name("mnist-mlp")
    return [r for r in client.search_runs([experiment.experiment_id]) if r.info.status == "FINISHED"]


def model_artifacts_of(client: mlflow.MlflowClient, run) -> Path:
    """The folder of the model logged by `run`, which must exist on disk."""
    (model,) = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert model.name == "model"
    folder = Path(model.artifact_location.removeprefix("file://"))
    assert (folder / "MLmodel").is_file(), folder
    return folder


def test_repro_experiment_metrics_and_plots(project, store, tmp_path):
    out = dvc(project, "repro")
    for name in ("download", "preprocess", "train", "evaluate"):
        assert f"Running stage '{name}'" in out
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9

    again = dvc(project, "repro")
    assert "Data and pipelines are up to date" in again
    assert "Running stage" not in again

    out = dvc(project, "exp", "run", "-S", "train.dropout=0.5")
    assert "Running stage 'train'" in out and "Running stage 'download'" not in out
    (row,) = [
        rev
        for baseline in json.loads(dvc(project, "exp", "show", "--json"))
        for group in baseline.get("experiments") or []
        for rev in group["revs"]
    ]
    name = row["name"]
    data = row["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["dropout"] == 0.5
    assert data["metrics"]["reports/metrics.json"]["data"]["test"]["accuracy"] > 0.9

    runs = finished_runs(store)
    assert len(runs) == 2  # the workspace run and the experiment's, none left RUNNING or FAILED
    (experiment_run,) = [r for r in runs if r.data.params["train.dropout"] == "0.5"]
    assert experiment_run.info.run_name == "relu-do0.5-s0"  # the setting; the DVC experiment is a tag
    assert experiment_run.data.tags["dvc_exp_name"] == name
    assert experiment_run.data.metrics["test_accuracy"] == pytest.approx(
        data["metrics"]["reports/metrics.json"]["data"]["test"]["accuracy"]
    )
    assert [m.step for m in store.get_metric_history(experiment_run.info.run_id, "val_loss")] == [1, 2]
    model_artifacts_of(store, experiment_run)

    shown = json.loads(dvc(project, "metrics", "show", "--json"))
    assert any("reports/metrics.json" in rev["data"] for rev in shown.values())
    plots = tmp_path / "plots"
    dvc(project, "plots", "show", "-o", str(plots))
    assert (plots / "index.html").is_file()
    assert (plots / "static").is_dir() and any((plots / "static").glob("*.png"))


@pytest.mark.slow
def test_a_temp_experiment_lands_in_the_same_store(project, store):
    dvc(project, "exp", "run", "--temp", "-S", "train.activation=tanh")
    assert not (project / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()
    (tanh_run,) = finished_runs(store)
    assert tanh_run.data.params["train.activation"] == "tanh"
    assert tanh_run.info.run_name == "tanh-do0.2-s0" and tanh_run.data.tags["dvc_exp_name"] != "workspace"
    assert "test_accuracy" in tanh_run.data.metrics

    # artifacts went beside the store's SQLite file (MLFLOW_TRACKING_URI's), not into the deleted temp copy
    artifacts = Path(tanh_run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_dir() and artifacts.is_relative_to(project.parent / "store" / "mlartifacts")
    assert (artifacts / "figures" / "confusion_matrix.png").is_file()
    assert model_artifacts_of(store, tanh_run).is_relative_to(project.parent / "store" / "mlartifacts")
    # the workspace is untouched: a temp experiment ran elsewhere
    assert not (project / "models" / "model.pt").exists()
