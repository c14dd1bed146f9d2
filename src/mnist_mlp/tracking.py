"""Everything MLflow: where the store is, the run of one train+evaluate, what gets logged.

The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlflow.db` with
artifacts in `<repo>/mlartifacts`, both absolute. `<repo>` is `DVC_ROOT` when DVC sets
it: queued and temp experiments run in a throwaway copy under `.dvc/tmp/exps/`, and a
store relative to that copy would be deleted with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
import pandas as pd
import torch
from filelock import FileLock
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mnist_mlp.errors import UserError
from mnist_mlp.project import repo_root


def tracking_uri(root: Optional[Path] = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def client():
    """An MlflowClient on the project's store."""

    return mlflow.MlflowClient(tracking_uri())


def artifact_root(root: Optional[Path] = None) -> str:
    return ((root or repo_root()) / "mlartifacts").as_uri()


def _local_sqlite_path(uri: str) -> Optional[Path]:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_experiment(name: str, root: Optional[Path] = None) -> str:
    """Create (once) the store and the experiment with an absolute artifact location; return its id.

    A file lock serializes the first creation: two queue workers migrating a new
    SQLite schema at once corrupt it.
    """

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    db = _local_sqlite_path(uri)
    lock = FileLock(str(db) + ".lock") if db else contextlib.nullcontext()
    with lock:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # a server decides its own artifact store; a local store gets an absolute folder
        location = artifact_root(root) if not uri.startswith(("http://", "https://")) else None
        # a model-training experiment: the UI opens on its runs table, not the GenAI traces overview
        return client.create_experiment(name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})


def git_commit(cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(extra: dict[str, str]) -> dict[str, str]:

    tags = {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "torch_version": torch.__version__,
        # seconds per epoch depend on it; queue workers must not oversubscribe the cores
        "torch_threads": str(torch.get_num_threads()),
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


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _active(run) -> Iterator["Run"]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM: never left RUNNING."""

    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield Run(run.info.run_id)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _start_new_run(experiment_id: str, tags: dict[str, str]):
    """A run named by the DVC experiment (`workspace` for a plain `dvc repro`), tagged up front."""

    return mlflow.start_run(
        experiment_id=experiment_id,
        run_name=os.environ.get("DVC_EXP_NAME") or "workspace",
        tags=run_tags(tags),
        log_system_metrics=False,
    )


def _log_params(params: dict[str, Any]) -> None:

    mlflow.log_params({key: str(value) for key, value in params.items()})


@contextlib.contextmanager
def training_run(experiment: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator["Run"]:
    """Open a new run with all params and tags logged up front."""
    with _active(_start_new_run(ensure_experiment(experiment), tags)) as active:
        _log_params(params)
        yield active


@contextlib.contextmanager
def evaluation_run(run_id: str, experiment: str, params: dict[str, Any]) -> Iterator["Run"]:
    """Reopen the train stage's run to add test metrics, figures and the model.

    When that run is not in this store (a model restored from a DVC cache, a deleted
    store), a new run is opened with the checkpoint's params, so nothing is lost.
    """

    experiment_id = ensure_experiment(experiment)
    try:
        mlflow.MlflowClient().get_run(run_id)
        run, is_new = mlflow.start_run(run_id=run_id, log_system_metrics=False), False
    except MlflowException:
        run, is_new = _start_new_run(experiment_id, {"trained_in_run": run_id}), True
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
        datasets = [MetaDataset(LocalArtifactDatasetSource(str(Path(path).resolve())), name=f"mnist-{split}", digest=md5)
                    for split, (path, md5) in splits.items()]
        mlflow.log_inputs(datasets, contexts=list(splits), tags_list=[None] * len(datasets))

    def log_metrics(self, metrics: dict[str, float]) -> None:
    
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()})

    def log_files(self, paths: list[Path], folder: str) -> None:
    
        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=folder)

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


# MLflow 3.17 unpickles by default: a pickled model, and the weights inside a pt2 archive.
# With this it refuses the first and loads the second only after checking it holds no pickle.
NO_PICKLE_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ModelURIError(UserError, ValueError):
    """An MLflow model that cannot be loaded; the message names the URI and why."""


def load_pixel_classifier(model_uri: str):
    """The logged pixels -> probabilities module of `model_uri` (runs:/..., models:/..., a folder).

    Never unpickles, whatever MLFLOW_ALLOW_PICKLE_DESERIALIZATION says: a pickled model is
    refused; a pt2 model (what `log_model` writes) loads once its archive is found pickle-free.
    """

    # a progress bar per download would bury predict's one-line-per-file output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri())
    try:
        with _environment(NO_PICKLE_ENV):
            return mlflow.pytorch.load_model(model_uri)
    except (MlflowException, OSError, RuntimeError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelURIError(f"{model_uri}: cannot load the MLflow model from {tracking_uri()} ({reason})") from None


# --- the models of a sweep, for `mnist-mlp app` ------------------------------------------------


class SweepError(UserError, LookupError):
    """No sweep to show: no store, no experiment, no such sweep; the message names the command that makes one."""


class SweepModel:
    """A FINISHED run of a sweep and the model its evaluate stage logged."""

    def __init__(self, name: str, run_id: str, params: dict[str, str]):
        self.name, self.run_id, self.params = name, run_id, params
        self.model_uri = f"runs:/{run_id}/model"


def sweep_models(experiment: str, sweep_id: str = "latest") -> tuple[str, list[SweepModel]]:
    """(sweep id, its FINISHED runs, oldest first); `latest` is the sweep of the newest FINISHED run tagged with one."""
    if "'" in sweep_id:
        raise SweepError(f"sweep id {sweep_id!r}: a quote cannot be searched for")
    uri = tracking_uri()
    db = _local_sqlite_path(uri)
    if db is not None and not db.is_file():  # MlflowClient would create an empty store there
        raise SweepError(f"no MLflow store at {db}; `make sweep` (or `make sweep-quick`) makes one with a sweep")
    # a tracking server that is down must not hold a request for MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    finished = "attributes.status = 'FINISHED'"
    try:
        store = client()
        found = store.get_experiment_by_name(experiment)
        if found is None:
            raise SweepError(f"no experiment '{experiment}' in {uri}; `make sweep` (or `make sweep-quick`) makes one")
        if sweep_id == "latest":
            newest = store.search_runs([found.experiment_id], f"{finished} and tags.sweep_id != ''", max_results=1,
                                       order_by=["attributes.start_time DESC"])  # fmt: skip
            if not newest:
                raise SweepError(f"no finished sweep in experiment '{experiment}' of {uri}; run `make sweep` (or `make sweep-quick`)")
            sweep_id = newest[0].data.tags["sweep_id"]
        runs = store.search_runs([found.experiment_id], f"{finished} and tags.sweep_id = '{sweep_id}'", max_results=1000,
                                 order_by=["attributes.start_time ASC"])  # fmt: skip
    except (MlflowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SweepError(f"cannot read the sweeps in {uri} ({reason})") from None
    if not runs:
        raise SweepError(f"no finished run of sweep '{sweep_id}' in experiment '{experiment}' of {uri}; `make sweep` runs one")
    return sweep_id, [SweepModel(run.info.run_name or run.info.run_id, run.info.run_id, dict(run.data.params)) for run in runs]
