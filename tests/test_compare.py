"""compare.py on a real SQLite MLflow store holding runs logged the way the stages log them."""

from __future__ import annotations

import math
import time

import mlflow
import pytest
from PIL import Image

from conftest import BIN, run
from mnist_mlp import compare


def log_run(client, experiment_id, name, sweep_id, activation, dropout, seed, curve, test_accuracy, status="FINISHED"):
    tags = {"sweep_id": sweep_id} if sweep_id else {}
    created = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = created.info.run_id
    for key, value in {"activation": activation, "dropout": dropout, "seed": seed, "epochs": len(curve)}.items():
        client.log_param(run_id, key, str(value))
    for epoch, accuracy in enumerate(curve, start=1):
        client.log_metric(run_id, "val_accuracy", accuracy, step=epoch)
    client.log_metric(run_id, "best_val_accuracy", max(curve))
    client.log_metric(run_id, "train_seconds", 10.0 * len(curve))
    if test_accuracy is not None:
        client.log_metric(run_id, "test_accuracy", test_accuracy)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    time.sleep(0.01)  # distinct start times: "latest sweep" is decided by them
    return run_id


@pytest.fixture
def store(mlflow_store):
    """An old 1-run sweep, then sweep B: a 2x3 grid, relu/0.5 with two seeds, plus a failed and an unswept run."""
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = client.create_experiment("mnist-mlp")
    log_run(client, experiment_id, "old", "A", "relu", 0.0, 0, [0.5], 0.5)
    accuracy = iter([0.91, 0.92, 0.93, 0.94, 0.95, 0.96])
    for activation in ("relu", "tanh"):
        for dropout in (0.0, 0.2, 0.5):
            log_run(client, experiment_id, f"B-{activation}-{dropout}", "B", activation, dropout, 0, [0.8, 0.9], next(accuracy))
    log_run(client, experiment_id, "B-relu-0.5-s1", "B", "relu", 0.5, 1, [0.7, 0.9], 0.97)
    log_run(client, experiment_id, "B-crashed", "B", "tanh", 0.5, 1, [0.8], None, status="FAILED")
    log_run(client, experiment_id, "workspace", "", "relu", 0.2, 0, [0.8, 0.85], 0.9)
    return client


def test_latest_sweep_by_default_with_mean_and_std_for_seeds(store, tmp_path):
    result = compare.compare("mnist-mlp")
    assert result.sweep_id == "B"
    assert len(result.runs) == 7 and list(result.left_out["name"]) == ["B-crashed"]
    summary = result.summary.set_index(["activation", "dropout"])
    assert len(summary) == 6
    cell = summary.loc[("relu", 0.5)]
    assert cell["runs"] == 2
    assert cell["test_accuracy_mean"] == pytest.approx((0.93 + 0.97) / 2)
    assert cell["test accuracy"] == f"0.9500 ± {math.sqrt(2) * 0.02:.4f}"
    assert summary.loc[("tanh", 0.2), "test accuracy"] == "0.9500"
    assert summary.loc[("tanh", 0.2), "epochs"] == "2"
    assert result.curves[("relu", 0.5)] == [(1, pytest.approx(0.75)), (2, pytest.approx(0.9))]

    table, picture = compare.write_report(result, tmp_path / "reports")
    text = table.read_text()
    assert "| relu | 0.5 | 2 | 0.9000 ± 0.0000 | 0.9500 ± 0.0283 | 2 ± 0 | 20.0 ± 0.0 |" in text
    assert "| tanh | 0.9400 | 0.9500 | 0.9600 |" in text  # the activation x dropout pivot
    assert "Best run: `B-relu-0.5-s1`" in text
    assert "`B-crashed` (FAILED)" in text
    assert "dvc plots diff B-relu-0.0 B-relu-0.2" in text
    assert "workspace" not in text and "old" not in text.split("Left out")[0].split("|")
    with Image.open(picture) as image:
        assert image.size[0] > 800 and image.size[1] > 300


def test_a_named_sweep_and_all_runs(store):
    assert list(compare.compare("mnist-mlp", "A").runs["name"]) == ["old"]
    everything = compare.compare("mnist-mlp", compare.ALL)
    assert len(everything.runs) == 9  # every finished run, the unswept workspace run included
    assert everything.summary.set_index(["activation", "dropout"]).loc[("relu", 0.2), "runs"] == 2


def test_unknown_sweep_and_experiment_are_one_clear_line(store, tmp_path):
    with pytest.raises(compare.CompareError, match="no run with sweep_id 'nope'.*latest sweeps: B, A"):
        compare.compare("mnist-mlp", "nope")
    with pytest.raises(compare.CompareError, match="no MLflow experiment 'other'"):
        compare.compare("other")
    result = run([str(BIN / "mnist-mlp"), "compare", "--sweep-id", "nope", "--reports", str(tmp_path / "r")], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mnist-mlp compare: error: no run with sweep_id 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_no_sweep_yet_points_to_make_sweep(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    log_run(client, client.create_experiment("mnist-mlp"), "workspace", "", "relu", 0.2, 0, [0.9], 0.9)
    with pytest.raises(compare.CompareError, match="make sweep.*--all"):
        compare.compare("mnist-mlp")
    assert len(compare.compare("mnist-mlp", compare.ALL).runs) == 1
