"""Reading runs back: a sweep's models for the app, runs as a table for compare and close-stale-runs."""

from __future__ import annotations

import os

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mnist_mlp.errors import UserError
from mnist_mlp.params import TrainParams, dotted
from mnist_mlp.tracking.location import local_sqlite_path, tracking_uri
from mnist_mlp.tracking.store import check_tracking_server, client, failure_line, literal

# Runs logged before MLflow params were keyed as params.yaml keys them kept the train section's keys bare
# (`dropout`, `augment.shift`); read back, they carry today's names, so a store's older sweeps still compare.
LEGACY_TRAIN_KEYS = frozenset(dotted(TrainParams().model_dump()))


def current_names(params: dict[str, str]) -> dict[str, str]:
    """A run's params with a bare train key (`dropout`) under its dotted name (`train.dropout`)."""
    return {f"train.{key}" if key in LEGACY_TRAIN_KEYS else key: value for key, value in params.items()}


# --- the models of a sweep, for `mnist-mlp app` ------------------------------------------------


class NoRunsError(UserError, LookupError):
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
    db = local_sqlite_path(uri)
    if db is not None and not db.is_file():  # MlflowClient would create an empty store there
        raise NoRunsError(f"no MLflow store at {db}; `make sweep` (or `make sweep-quick`) makes one with a sweep")
    # a tracking server that is down must not hold a request for MLflow's default minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    finished = "attributes.status = 'FINISHED'"
    try:
        store = client()
        found = store.get_experiment_by_name(experiment)
        if found is None:
            raise NoRunsError(f"no experiment '{experiment}' in {uri}; `make sweep` (or `make sweep-quick`) makes one")
        if sweep_id == "latest":
            newest = store.search_runs(
                [found.experiment_id],
                f"{finished} and tags.sweep_id != ''",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if not newest:
                raise NoRunsError(
                    f"no finished sweep in experiment '{experiment}' of {uri}; run `make sweep` (or `make sweep-quick`)"
                )
            sweep_id = newest[0].data.tags["sweep_id"]
        runs = store.search_runs(
            [found.experiment_id],
            f"{finished} and tags.sweep_id = {literal(sweep_id, 'sweep id')}",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
        )
    except (MlflowException, OSError) as exc:
        raise NoRunsError(f"cannot read the sweeps in {uri} ({failure_line(exc)})") from None
    if not runs:
        raise NoRunsError(
            f"no finished run of sweep '{sweep_id}' in experiment '{experiment}' of {uri}; `make sweep` runs one"
        )
    return sweep_id, [
        SweepModel(
            run.data.tags.get("dvc_exp_name") or run.info.run_name or run.info.run_id,
            run.info.run_id,
            current_names(dict(run.data.params)),
        )
        for run in runs
    ]


def search_runs(experiment: str | None, filter_string: str = "", **options) -> pd.DataFrame:
    """`mlflow.search_runs` on the project's store: one row per run of `experiment` (None: of every
    experiment) matching `filter_string`, newest first; columns run_id, status, params.*, metrics.*, tags.*."""
    check_tracking_server()
    mlflow.set_tracking_uri(tracking_uri())
    if experiment is not None and client().get_experiment_by_name(experiment) is None:
        raise NoRunsError(
            f"no experiment '{experiment}' in {tracking_uri()}; `make sweep` (or `make sweep-quick`) makes one"
        )
    found = mlflow.search_runs(
        experiment_names=[experiment] if experiment else None,
        search_all_experiments=experiment is None,
        filter_string=filter_string,
        **options,
    )
    for key in LEGACY_TRAIN_KEYS & {column.removeprefix("params.") for column in found.columns}:
        old, new = f"params.{key}", f"params.train.{key}"
        found[new] = found[new].fillna(found[old]) if new in found else found[old]  # a store may hold both
        found = found.drop(columns=old)
    return found


def trial_epochs(experiment: str, sweep_id: str, trial: int) -> tuple[int, int] | None:
    """(epochs done, epochs planned) of a sweep trial's RUNNING training run, from the run's own metric history and
    params; None before its run starts, after it ends, or while the store does not answer (progress is a courtesy)."""
    try:
        store = client()
        found = store.get_experiment_by_name(experiment)
        if found is None:
            return None
        running = store.search_runs(
            [found.experiment_id],
            f"tags.sweep_id = {literal(sweep_id, 'sweep id')} and tags.sweep_trial = '{int(trial)}' "
            "and attributes.status = 'RUNNING'",
            max_results=1,
        )
        if not running:
            return None
        planned = int(current_names(running[0].data.params).get("train.epochs", "0"))
        return len(store.get_metric_history(running[0].info.run_id, "val_accuracy")), planned
    except (MlflowException, OSError, ValueError):
        return None
