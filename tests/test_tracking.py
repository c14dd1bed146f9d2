"""tracking.py: where the store is, the experiment, and how a run ends (on a real SQLite store)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import mlflow
import pytest

from mnist_mlp.tracking import location, runs, store


@pytest.fixture
def client(mlflow_store) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(mlflow_store)


def only_run(client: mlflow.MlflowClient, experiment: str = "unit"):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def test_the_environment_store_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert location.tracking_uri() == "http://127.0.0.1:5000"


def test_the_store_is_absolute_under_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)  # the cwd (a temp copy of the repo, in an experiment) must not matter
    assert location.tracking_uri() == f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}"
    assert location.tracking_uri().startswith("sqlite:////")  # four slashes: an absolute path
    assert location.artifact_root() == (tmp_path / "repo" / "mlartifacts").as_uri()


def test_without_dvc_root_the_store_is_in_the_nearest_folder_with_dot_dvc(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(repo / "src" / "deep")
    assert location.tracking_uri() == f"sqlite:///{repo.resolve() / 'mlflow.db'}"
    assert location.artifact_root().startswith("file:///")
    assert location.tracking_uri(root=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_ensure_experiment_creates_it_once_with_an_absolute_artifact_location(
    mlflow_store, empty_mlflow_db, monkeypatch, tmp_path
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(empty_mlflow_db, repo / "mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    monkeypatch.chdir(tmp_path)

    experiment_id = store.ensure_experiment("unit")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    experiment = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").get_experiment(experiment_id)
    assert experiment.name == "unit"
    assert experiment.artifact_location == (repo / "mlartifacts").as_uri()
    assert experiment.artifact_location.startswith("file:///")
    # a model-training experiment: MLflow 3's UI opens it on its runs, not on the GenAI traces overview
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert store.ensure_experiment("unit") == experiment_id
    assert store.ensure_experiment("other") != experiment_id


def test_a_successful_run_finishes_with_params_metrics_and_tags(client, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-lobe")
    params = {
        "train.activation": "tanh",
        "train.dropout": 0.5,
        "train.seed": 3,
        "hidden_sizes": [32],
        "preprocess.normalization": "standardize",
    }
    with runs.training_run("unit", params, {"device": "cpu"}) as run:
        assert mlflow.active_run().info.run_id == run.run_id
        for epoch in (1, 2, 3):
            run.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": 0.5 + epoch / 10})
        run.log_metrics({"best_val_accuracy": 0.8})
    assert mlflow.active_run() is None

    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "tanh-do0.5-s3"  # the setting, readable in the UI's runs table
    assert logged.data.tags["dvc_exp_name"] == "bushy-lobe"
    assert logged.data.tags["device"] == "cpu"
    assert "torch_version" in logged.data.tags
    assert logged.data.params == {
        "train.activation": "tanh",
        "train.dropout": "0.5",
        "train.seed": "3",
        "hidden_sizes": "[32]",
        "preprocess.normalization": "standardize",
    }
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [m.step for m in client.get_metric_history(run.run_id, "val_accuracy")] == [1, 2, 3]
    assert "epoch" not in logged.data.metrics
    assert logged.data.metrics["best_val_accuracy"] == 0.8


def test_a_run_outside_an_experiment_is_tagged_workspace(client):
    with runs.training_run("unit", {"train.activation": "relu", "train.dropout": 0.0, "train.seed": 0}, {}) as run:
        pass
    logged = client.get_run(run.run_id)
    assert logged.info.run_name == "relu-do0-s0" and logged.data.tags["dvc_exp_name"] == "workspace"


def test_a_run_that_raises_ends_failed(client):
    with pytest.raises(ValueError, match="boom"):
        with runs.training_run("unit", {"lr": 0.1}, {}):
            raise ValueError("boom")
    assert only_run(client).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_ctrl_c_ends_killed(client):
    with pytest.raises(KeyboardInterrupt):
        with runs.training_run("unit", {}, {}):
            raise KeyboardInterrupt
    assert only_run(client).info.status == "KILLED"


def test_sigterm_ends_killed_and_restores_the_handler(client):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with runs.training_run("unit", {}, {}):
            os.kill(os.getpid(), signal.SIGTERM)
    assert only_run(client).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


def test_evaluation_reopens_the_training_run(client, tmp_path):
    with runs.training_run("unit", {"dropout": 0.2}, {}) as trained:
        pass
    figure = tmp_path / "confusion_matrix.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    with runs.evaluation_run(trained.run_id, "unit", {"dropout": 0.2}) as run:
        run.log_metrics({"test_accuracy": 0.9})
        run.log_files([figure], "figures")
    assert run.run_id == trained.run_id
    logged = client.get_run(trained.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["test_accuracy"] == 0.9
    assert [a.path for a in client.list_artifacts(trained.run_id, "figures")] == ["figures/confusion_matrix.png"]
    artifacts = Path(logged.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "figures" / "confusion_matrix.png").is_file()


def test_evaluation_of_a_run_not_in_this_store_opens_a_new_one(client):
    with runs.evaluation_run("0123456789abcdef0123456789abcdef", "unit", {"dropout": 0.2}) as run:
        run.log_metrics({"test_accuracy": 0.9})
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["trained_in_run"] == "0123456789abcdef0123456789abcdef"
    assert logged.data.params == {"dropout": "0.2"}
