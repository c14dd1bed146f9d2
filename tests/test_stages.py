"""The four stage scripts, each a subprocess as DVC runs it, on tiny synthetic MNIST."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from mnist_mlp.files import md5_of
from support.cli import run
from support.mnist_files import write_checksums, write_tiny_mnist
from support.params import TINY_PARAMS, default_params, merge
from support.paths import ROOT

RAW_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
STAGES = {
    "download": ["--out", "data/raw"],
    "preprocess": ["--raw", "data/raw", "--out", "data/processed"],
    "train": ["--data", "data/processed", "--model", "models/model.pt", "--log", "reports/training_log.csv"],
    "evaluate": ["--model", "models/model.pt", "--test", "data/processed/test.pt", "--reports", "reports"],
}

pytestmark = pytest.mark.integration  # every stage script a subprocess, as DVC runs it


def stage(name: str, workdir: Path, env: dict, check: bool = True, params: str = "params.yaml"):
    return run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", params, *STAGES[name]], workdir, env, check
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, empty_mlflow_db):
    """A work folder after download -> preprocess -> train -> evaluate, with the outputs of each."""
    base = tmp_path_factory.mktemp("stages")
    workdir = base / "work"
    workdir.mkdir()
    params = merge(default_params(), TINY_PARAMS)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mirror = write_tiny_mnist(base / "mirror")
    (base / "store").mkdir()
    shutil.copy(empty_mlflow_db, base / "store" / "mlflow.db")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "MNIST_MIRROR": str(mirror),
        "MNIST_CHECKSUMS": str(write_checksums(mirror, base / "checksums.yaml")),
        "MNIST_OFFICIAL_MIRRORS": "none",
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'store' / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    }
    for key in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(key, None)
    outputs = {name: stage(name, workdir, env).stdout for name in STAGES}
    return workdir, env, outputs


def test_download_writes_the_four_verified_files(pipeline):
    workdir, _, outputs = pipeline
    assert sorted(p.name for p in (workdir / "data" / "raw").iterdir()) == RAW_FILES
    assert outputs["download"].count("verified") == 4
    assert (workdir / "data" / "raw" / "train-images-idx3-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x03"


def test_preprocess_writes_three_splits(pipeline):
    workdir, _, outputs = pipeline
    sizes = {}
    for split in ("train", "val", "test"):
        blob = torch.load(workdir / "data" / "processed" / f"{split}.pt", weights_only=True)
        sizes[split] = len(blob["labels"])
    assert sizes == {"train": 500, "val": 100, "test": 200}
    assert "standardize normalization" in outputs["preprocess"]
    assert "train 500, val 100, test 200" in outputs["preprocess"]


def test_train_writes_the_model_and_one_log_row_per_epoch(pipeline):
    workdir, _, outputs = pipeline
    checkpoint = torch.load(workdir / "models" / "model.pt", weights_only=True)
    assert checkpoint["architecture"]["hidden_sizes"] == [32]
    assert checkpoint["params"]["train"]["epochs"] == 2
    assert "784-32-10 relu MLP, 25,450 parameters, on cpu" in outputs["train"]
    with open(workdir / "reports" / "training_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"} <= set(rows[0])
    assert checkpoint["info"]["best_val_accuracy"] == max(float(row["val_accuracy"]) for row in rows)
    # what the net trained on (augmentation is off by default: the stored digits)
    figure = workdir / "reports" / "figures" / "augmented.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 1000
    assert "augment" not in outputs["train"]


def test_evaluate_writes_metrics_predictions_and_figures(pipeline):
    workdir, _, outputs = pipeline
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    assert 0.9 <= metrics["test"]["accuracy"] <= 1.0  # the synthetic digits are easy
    assert set(metrics["test"]["per_class"]) == {str(c) for c in range(10)}
    assert metrics["training"]["epochs"] == 2
    assert f"test accuracy {metrics['test']['accuracy']:.4f}" in outputs["evaluate"]

    with open(workdir / "reports" / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 200 and set(predictions[0]) == {"actual", "predicted"}
    correct = sum(row["actual"] == row["predicted"] for row in predictions)
    assert correct / 200 == pytest.approx(metrics["test"]["accuracy"])

    for name in ("confusion_matrix.png", "misclassified.png"):
        figure = workdir / "reports" / "figures" / name
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 1000


def test_train_and_evaluate_share_one_finished_mlflow_run(pipeline, monkeypatch):
    workdir, env, _ = pipeline
    metrics = json.loads((workdir / "reports" / "metrics.json").read_text())
    record = json.loads((workdir / "reports" / "training_run.json").read_text())
    assert metrics["mlflow_run_id"] == record["mlflow_run_id"]
    assert metrics["training"]["seconds"] == round(record["train_seconds"], 2)
    checkpoint = torch.load(workdir / "models" / "model.pt", weights_only=True)
    assert set(checkpoint["info"]) == {"best_val_accuracy", "best_epoch", "epochs", "device"}  # nothing per run

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    logged = client.get_run(metrics["mlflow_run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "relu-do0.2-s0" and logged.data.tags["dvc_exp_name"] == "workspace"
    assert logged.data.params["train.hidden_sizes"] == "[32]" and logged.data.params["train.dropout"] == "0.2"
    assert logged.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_accuracy")] == [1, 2]
    figures = {a.path for a in client.list_artifacts(logged.info.run_id, "figures")}
    assert figures == {"figures/augmented.png", "figures/confusion_matrix.png", "figures/misclassified.png"}
    # the per-digit predictions, read back as the paired tests read them: the same digits as reports/predictions.csv
    from mnist_mlp.tracking import predictions

    with monkeypatch.context() as patched:
        patched.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        logged_predictions = predictions.logged(logged.info.run_id)
    local = predictions.read(workdir / "reports" / "predictions.csv")
    assert (logged_predictions.actual == local.actual).all() and (logged_predictions.predicted == local.predicted).all()
    # the UI's Dataset column: each split that trained or tested the model, its md5 the digest
    datasets = {item.dataset.name: item for item in logged.inputs.dataset_inputs}
    assert set(datasets) == {"mnist-train", "mnist-val", "mnist-test"}
    for split in ("train", "val"):
        assert datasets[f"mnist-{split}"].dataset.digest == logged.data.tags[f"data_md5_{split}"]
        assert datasets[f"mnist-{split}"].tags[0].value == split  # context
    assert datasets["mnist-test"].dataset.digest == md5_of(workdir / "data" / "processed" / "test.pt")


def test_a_bad_param_stops_the_train_stage_with_one_line_and_no_model(pipeline, tmp_path):
    workdir, env, _ = pipeline
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["train"]["dropuot"] = 0.5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    result = run(
        [
            sys.executable,
            str(ROOT / "stages" / "train.py"),
            "--params",
            str(tmp_path / "bad.yaml"),
            "--data",
            str(workdir / "data" / "processed"),
            "--model",
            str(out / "model.pt"),
            "--log",
            str(out / "log.csv"),
        ],
        workdir,
        env,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("train: error: ")
    assert "unknown key 'train.dropuot'; did you mean 'train.dropout'?" in lines[0]
    assert not out.exists()


def test_a_stage_run_by_a_python_without_the_project_packages_names_the_fix(tmp_path):
    # what `dvc repro` outside the venv does: the stage runs the system python
    bare = tmp_path / "bare"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    result = subprocess.run(
        [str(bare / "bin" / "python"), str(ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("mnist-mlp: error: ") and "lacks torch" in line
    assert line.endswith("run inside the project's venv: `source .venv/bin/activate` (`make install` creates it)")
