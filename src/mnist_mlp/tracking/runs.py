"""The MLflow run of one train + evaluate: opened with params and tags, ended FINISHED, FAILED or KILLED, never left RUNNING."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mnist_mlp.files import staged_path
from mnist_mlp.tracking.location import tracking_uri
from mnist_mlp.tracking.store import TrackingServerError, ensure_experiment, failure_reason


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_name(params: dict[str, Any]) -> str:
    """The setting a run trained, as the MLflow UI's runs table shows it: `relu-do0.2-s1`; a sweep's trial
    by its study and trial number (`act-x-drop-7`, its DVC experiment's name); a run of other params (a
    load test's) by its DVC experiment."""
    if params.get("tracking.trial") is not None:
        return f"{params['tracking.sweep_id']}-{params['tracking.trial']}"
    if not {"train.activation", "train.dropout", "train.seed"} <= params.keys():
        return os.environ.get("DVC_EXP_NAME") or "workspace"
    return f"{params['train.activation']}-do{float(params['train.dropout']):g}-s{params['train.seed']}"


def run_tags(extra: dict[str, str]) -> dict[str, str]:
    tags = {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",  # the run's name is its setting
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "torch_version": torch.__version__,
        # lets `mnist-mlp close-stale-runs` tell a crashed run from a live one
        "mnist_mlp.host": socket.gethostname(),
        "mnist_mlp.pid": str(os.getpid()),
        **extra,
    }
    commit = git_commit(Path.cwd()) or os.environ.get("DVC_EXP_BASELINE_REV")
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return {key: value for key, value in tags.items() if value}


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _active(run) -> Iterator[Run]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM: never left RUNNING."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    run_id = run.info.run_id
    try:
        yield Run(run_id)
    except KeyboardInterrupt:
        _end_run(run_id, "KILLED")
        raise
    except MlflowException as exc:
        # MLflow's own retries are spent (a server gone for minutes, a locked store): one line, not a traceback
        _end_run(run_id, "FAILED")
        raise TrackingServerError(
            f"{tracking_uri()}: an MLflow call failed during run {run_id} ({failure_reason(exc)}); the run ended FAILED"
        ) from None
    except BaseException:
        _end_run(run_id, "FAILED")
        raise
    else:
        _end_run(run_id, "FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _end_run(run_id: str, status: str) -> None:
    """End the active run with `status`; a store that cannot take it is one line naming the run, never a silent loss."""
    try:
        mlflow.end_run(status)
    except MlflowException as exc:
        raise TrackingServerError(
            f"{tracking_uri()}: cannot end MLflow run {run_id} as {status} ({failure_reason(exc)}); "
            "it stays RUNNING there until `mnist-mlp close-stale-runs` ends it"
        ) from None


def _start_new_run(experiment_id: str, name: str, tags: dict[str, str]):
    """A run named by its setting and tagged up front, the DVC experiment (`workspace` for a plain `dvc repro`) among the tags."""
    return mlflow.start_run(
        experiment_id=experiment_id,
        run_name=name,
        tags=run_tags(tags),
        log_system_metrics=False,
    )


def _log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({key: str(value) for key, value in params.items()})


@contextlib.contextmanager
def training_run(experiment: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[Run]:
    """Open a new run with all params and tags logged up front."""
    with _active(_start_new_run(ensure_experiment(experiment), run_name(params), tags)) as active:
        _log_params(params)
        yield active


@contextlib.contextmanager
def evaluation_run(run_id: str, experiment: str, params: dict[str, Any]) -> Iterator[Run]:
    """Reopen the train stage's run to add test metrics, figures and the model.

    When that run is not in this store (a model restored from a DVC cache, a deleted
    store), a new run is opened with the checkpoint's params, so nothing is lost.
    """

    experiment_id = ensure_experiment(experiment)
    try:
        mlflow.MlflowClient().get_run(run_id)
        run, is_new = mlflow.start_run(run_id=run_id, log_system_metrics=False), False
    except MlflowException:
        run, is_new = _start_new_run(experiment_id, run_name(params), {"trained_in_run": run_id}), True
    with _active(run) as active:
        if is_new:
            _log_params(params)
        yield active


class Run:
    """The active run of a train or evaluate stage."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_epoch(self, record: dict[str, float]) -> None:
        """All of one epoch's metrics in a single batch call, at step = epoch."""
        metrics = {key: float(value) for key, value in record.items() if key != "epoch"}
        mlflow.log_metrics(metrics, step=int(record["epoch"]))

    def log_datasets(self, splits: dict[str, tuple[Path, str]]) -> None:
        """The cached splits that trained the model ({split: (file, md5)}), in the UI's Dataset column."""
        datasets = [
            MetaDataset(LocalArtifactDatasetSource(str(Path(path).resolve())), name=f"mnist-{split}", digest=md5)
            for split, (path, md5) in splits.items()
        ]
        mlflow.log_inputs(datasets, contexts=list(splits), tags_list=[None] * len(datasets))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})

    def log_files(self, paths: list[Path], folder: str) -> None:
        """Each output under its own name, also while `files.one_unit` still holds it in a temp file."""
        with tempfile.TemporaryDirectory(prefix="mnist-mlp-log-") as scratch:
            for path in map(Path, paths):
                content = staged_path(path)
                if content != path:
                    content = Path(shutil.copy(content, Path(scratch) / path.name))
                mlflow.log_artifact(str(content), artifact_path=folder)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        mlflow.log_table(pd.DataFrame(rows), artifact_file=artifact_file)

    def log_model(self, classifier, input_example) -> str:
        """Log the pixels -> probabilities module (eval mode) with signature and input example.

        As a torch.export program ("pt2"): loading and `mlflow models serve` never unpickle
        code, and need no copy of this package. The example needs 2+ rows, or the exported
        batch size is pinned to 1.
        """
        classifier.eval()
        with torch.no_grad():
            output = classifier(torch.as_tensor(input_example)).numpy()
        info = mlflow.pytorch.log_model(
            classifier,
            name="model",
            signature=infer_signature(input_example, output),
            input_example=input_example,
            # explicit: MLflow falls back to pickle on Databricks stores
            serialization_format="pt2",
            # pinned here, so MLflow does not spend seconds inferring them
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pandas"],
        )
        return info.model_uri
