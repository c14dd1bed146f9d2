"""Everything MLflow: where the store is, the run of one train+evaluate, what gets logged.

The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlflow.db` with
artifacts in `<repo>/mlartifacts`, both absolute. `<repo>` is `DVC_ROOT` when DVC sets
it: queued and temp experiments run in a throwaway copy under `.dvc/tmp/exps/`, and a
store relative to that copy would be deleted with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import mlflow
import pandas as pd
import torch
from filelock import FileLock
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from mnist_mlp.errors import UserError
from mnist_mlp.files import staged_path
from mnist_mlp.model_check import verify_model_folder
from mnist_mlp.project import repo_root


def tracking_uri(root: Optional[Path] = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def client():
    """An MlflowClient on the project's store (a tracking server is checked first: see check_tracking_server)."""

    check_tracking_server()
    return mlflow.MlflowClient(tracking_uri())


class TrackingServerError(UserError, RuntimeError):
    """A tracking server that does not answer, or refuses us; the message names the URI and the fix."""


PREFLIGHT_TIMEOUT = 15  # seconds: a dead server refuses at once, only a hung one waits this; a busy CPU delays /health
LOGIN_TIMEOUT = 30  # seconds: the basic-auth app checks a password with PBKDF2, slow on a busy CPU
_answered: set[str] = set()


def _network_reason(exc: BaseException) -> str:
    """Why a request failed, from the exception chain's OSError (not from MLflow's message text)."""
    cause: Optional[BaseException] = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, (TimeoutError, socket.timeout)) or "Timeout" in type(cause).__name__:
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def check_tracking_server(uri: Optional[str] = None) -> None:
    """An http(s) store must answer within seconds, and take our credentials, before any work starts.

    Without this a dead URI costs MLflow's default retries (7, about 4 minutes) per call, and a
    training would run to its end before its first log call fails. Once per process and URI.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    fix = "start it with `make server` or unset MLFLOW_TRACKING_URI"
    try:
        health = http_request(creds, "/health", "GET", max_retries=0, timeout=PREFLIGHT_TIMEOUT, raise_on_status=False)
        if health.status_code != 200:
            raise TrackingServerError(f"{uri}: not an MLflow tracking server (HTTP {health.status_code} at /health); {fix}")
        # /health needs no login; this does
        probe = http_request(creds, "/api/2.0/mlflow/experiments/search", "POST", max_retries=0,
                             timeout=LOGIN_TIMEOUT, raise_on_status=False, json={"max_results": 1})  # fmt: skip
    except MlflowException as exc:
        raise TrackingServerError(f"{uri}: MLflow tracking server not answering ({_network_reason(exc)}); {fix}") from None
    if probe.status_code == 401:
        who = f"user {creds.username!r}" if creds.username else "no MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
        raise TrackingServerError(f"{uri}: the tracking server refused the credentials (HTTP 401, {who}); "
                                  "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an MLflow user")  # fmt: skip
    if probe.status_code == 403:
        raise TrackingServerError(f"{uri}: user {creds.username!r} may not read experiments (HTTP 403); "
                                  "ask the server's admin for READ or EDIT permission")  # fmt: skip
    if probe.status_code != 200:
        raise TrackingServerError(f"{uri}: the tracking server answered HTTP {probe.status_code} to a search; {fix}")
    _answered.add(uri)


class StoreError(UserError, RuntimeError):
    """The local MLflow store cannot be used (locked, damaged); the message names it and what to do."""


def store_failure(exc: BaseException) -> Optional[StoreError]:
    """A one-line StoreError for a SQLite failure anywhere in `exc`'s chain (by SQLite's error code), else None."""
    cause: Optional[BaseException] = exc
    while cause is not None and not isinstance(cause, sqlite3.Error):
        cause = cause.__cause__ or cause.__context__
    code = getattr(cause, "sqlite_errorname", None)
    if code is None:
        return None
    uri = tracking_uri()
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(f"{uri}: the MLflow store is locked by another process ({code}); "
                          "wait for it to finish, or stop it, then run again")  # fmt: skip
    if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return StoreError(f"{uri}: the MLflow store is damaged ({code}: {cause}); "
                          "restore it from a backup, or move it aside to start a new store")  # fmt: skip
    return StoreError(f"{uri}: the MLflow store failed ({code}: {cause})")


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
    check_tracking_server(uri)
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
    run_id = run.info.run_id
    try:
        yield Run(run_id)
    except KeyboardInterrupt:
        _end_run(run_id, "KILLED")
        raise
    except MlflowException as exc:
        # MLflow's own retries are spent (a server gone for minutes, a locked store): one line, not a traceback
        _end_run(run_id, "FAILED")
        raise TrackingServerError(f"{tracking_uri()}: an MLflow call failed during run {run_id} "
                                  f"({_failure_reason(exc)}); the run ended FAILED") from None  # fmt: skip
    except BaseException:
        _end_run(run_id, "FAILED")
        raise
    else:
        _end_run(run_id, "FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _failure_reason(exc: MlflowException) -> str:
    reason = _network_reason(exc)
    return reason if reason != type(exc).__name__ else (str(exc).strip().splitlines() or [reason])[0]


def _end_run(run_id: str, status: str) -> None:
    """End the active run with `status`; a store that cannot take it is one line naming the run, never a silent loss."""
    try:
        mlflow.end_run(status)
    except MlflowException as exc:
        raise TrackingServerError(f"{tracking_uri()}: cannot end MLflow run {run_id} as {status} ({_failure_reason(exc)}); "
                                  "it stays RUNNING there until `mnist-mlp close-stale-runs` ends it") from None  # fmt: skip


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

    def register_model(self, model_uri: str, name: str, tags: dict[str, str]) -> "ModelVersion":
        """A new version of `name` for the model just logged, tagged with where it came from (this run's commit
        and DVC experiment) and `tags`."""
        run_tags = mlflow.MlflowClient().get_run(self.run_id).data.tags
        origin = {key: run_tags[key] for key in ("git_commit", "dvc_exp_name") if run_tags.get(key)}
        return register_model(model_uri, name, {**origin, **tags})


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


def _failure_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def verified_model(model_uri: str) -> Iterator[Path]:
    """A private local copy of the MLflow model at `model_uri`, checked to be one this project logged.

    The copy is what gets loaded or served, so nothing can change between the check and the load.
    A crafted model (code paths, a loader or pickle module of its own, extra files, another
    flavor) raises model_check.ModelCheckError before any of it is imported or unpickled.
    """
    # a progress bar per download would bury predict's one-line-per-file output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_tracking_server()
    mlflow.set_tracking_uri(tracking_uri())
    if Path(model_uri).is_dir():  # a local folder: checked as it is (a link would be followed by the copy)
        verify_model_folder(model_uri, model_uri)
    with tempfile.TemporaryDirectory(prefix="mnist-mlp-model-") as scratch:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        except (MlflowException, OSError, ValueError) as exc:
            raise ModelURIError(f"{model_uri}: cannot download the MLflow model from {tracking_uri()} ({_failure_line(exc)})") from None
        verify_model_folder(local, model_uri)
        yield local


def load_pixel_classifier(model_uri: str):
    """The logged pixels -> probabilities module of `model_uri` (runs:/..., models:/..., a folder).

    Verified first (`verified_model`), then loaded by MLflow with unpickling refused whatever
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION says: the pt2 archive loads once MLflow finds it pickle-free.
    """
    with verified_model(model_uri) as local:
        try:
            with _environment(NO_PICKLE_ENV):
                return mlflow.pytorch.load_model(str(local))
        except (MlflowException, OSError, RuntimeError, ValueError) as exc:
            raise ModelURIError(f"{model_uri}: cannot load the MLflow model from {tracking_uri()} ({_failure_line(exc)})") from None


# --- the model registry: a version per evaluated model, the `champion` alias --------------------


class RegistryError(UserError, LookupError):
    """No such registered model, version or run; the message names it and what makes one."""


class ModelVersion(NamedTuple):
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version} (run {self.run_id})"


def _model_version(found) -> ModelVersion:
    return ModelVersion(found.name, str(found.version), found.run_id or "", dict(found.tags or {}))


class FilterValueError(UserError, ValueError):
    """A value that cannot be written into an MLflow filter string."""


def literal(value: str, what: str) -> str:
    """`value` quoted for an MLflow filter string. MLflow's grammar has no escape for a quote,
    so a value holding one (or a backslash) is refused, never pasted in."""
    if "'" in value or "\\" in value:
        raise FilterValueError(f"{what} {value!r}: a quote or backslash cannot be searched for in MLflow")
    return f"'{value}'"


def _absent(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def register_model(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of registered model `name` (created on first use) for a logged model, tagged."""
    mlflow.set_tracking_uri(tracking_uri())
    return _model_version(mlflow.register_model(model_uri, name, tags=tags))


def model_version(name: str, version: str) -> ModelVersion:
    try:
        return _model_version(client().get_model_version(name, version))
    except MlflowException as exc:
        if _absent(exc):
            raise RegistryError(f"no version {version} of registered model '{name}' in {tracking_uri()}") from None
        raise


def version_of_run(name: str, run_id: str) -> ModelVersion:
    """The newest version of `name` registered from run `run_id`."""
    if not run_id.isalnum():
        raise RegistryError(f"run id {run_id!r}: expected the hex id MLflow gives a run")
    found = client().search_model_versions(f"name = {literal(name, 'registered model')} and run_id = {literal(run_id, 'run id')}",
                                           order_by=["version_number DESC"])  # fmt: skip
    if not found:
        raise RegistryError(f"run {run_id} registered no version of '{name}' in {tracking_uri()}; "
                            "the evaluate stage registers one (`dvc repro`)")  # fmt: skip
    return _model_version(found[0])


def alias_version(name: str, alias: str) -> Optional[ModelVersion]:
    """The version `name@alias` points at; None when the alias (or the model) does not exist yet."""
    try:
        version = client().get_registered_model(name).aliases.get(alias)
    except MlflowException as exc:
        if _absent(exc):
            return None
        raise
    return model_version(name, str(version)) if version is not None else None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of each metric of a run."""
    return dict(client().get_run(run_id).data.metrics)


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
    literal(sweep_id, "sweep id")  # refused before any store is opened
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
        runs = store.search_runs([found.experiment_id], f"{finished} and tags.sweep_id = {literal(sweep_id, 'sweep id')}", max_results=1000,
                                 order_by=["attributes.start_time ASC"])  # fmt: skip
    except (MlflowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SweepError(f"cannot read the sweeps in {uri} ({reason})") from None
    if not runs:
        raise SweepError(f"no finished run of sweep '{sweep_id}' in experiment '{experiment}' of {uri}; `make sweep` runs one")
    return sweep_id, [SweepModel(run.info.run_name or run.info.run_id, run.info.run_id, dict(run.data.params)) for run in runs]


def search_runs(experiment: Optional[str], filter_string: str = "", **options) -> pd.DataFrame:
    """`mlflow.search_runs` on the project's store: one row per run of `experiment` (None: of every
    experiment) matching `filter_string`, newest first; columns run_id, status, params.*, metrics.*, tags.*."""
    check_tracking_server()
    mlflow.set_tracking_uri(tracking_uri())
    if experiment is not None and client().get_experiment_by_name(experiment) is None:
        raise SweepError(f"no experiment '{experiment}' in {tracking_uri()}; `make sweep` (or `make sweep-quick`) makes one")
    return mlflow.search_runs(experiment_names=[experiment] if experiment else None,
                              search_all_experiments=experiment is None, filter_string=filter_string, **options)  # fmt: skip
