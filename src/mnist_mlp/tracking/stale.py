"""Closing MLflow runs that a crash left RUNNING (`kill -9`, a power cut, an OOM kill).

A run tagged with this host and a process id that is gone is stale at any age; a run from another
host (or without the tags) only once it started over `older_than` minutes ago, because a
teammate's long training may still be alive there.
"""

from __future__ import annotations

import socket
import time
from typing import NamedTuple

import pandas as pd
import psutil

from mnist_mlp.tracking import queries, store

CLOSED_TAG = "mnist_mlp.closed_stale"


class StaleRun(NamedTuple):
    run_id: str
    experiment: str
    run_name: str
    reason: str


def _running(pid: int) -> bool:
    """A live process: a killed one not yet reaped (a zombie, for a moment after `kill -9`) is gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def close_stale_runs(older_than_minutes: float, dry_run: bool = False) -> list[StaleRun]:
    """End each stale run, in any experiment, KILLED with a tag saying why; return them."""
    running = queries.search_runs(None, "attributes.status = 'RUNNING'").astype(object)
    cutoff = pd.Timestamp(time.time() - older_than_minutes * 60, unit="s", tz="UTC")
    client, stale = store.client(), []
    for run in running.where(running.notna(), None).to_dict("records"):
        pid = run.get("tags.mnist_mlp.pid") or ""
        if run.get("tags.mnist_mlp.host") == socket.gethostname() and pid.isdigit():
            reason = None if _running(int(pid)) else f"its process {pid} on this host is gone"
        else:
            reason = f"started over {older_than_minutes:g} minutes ago" if run["start_time"] < cutoff else None
        if reason:
            experiment = client.get_experiment(run["experiment_id"]).name
            stale.append(StaleRun(run["run_id"], experiment, run.get("tags.mlflow.runName") or "", reason))
    for run in [] if dry_run else stale:
        client.set_tag(run.run_id, CLOSED_TAG, f"closed by mnist-mlp close-stale-runs: {run.reason}")
        client.set_terminated(run.run_id, status="KILLED")
    return stale


def close_trial_runs(experiment: str, study: str, trial: int, reason: str) -> list[str]:
    """End the runs of one sweep trial still RUNNING as KILLED, tagged with `reason` (its worker died:
    Optuna's heartbeat said so); return their ids. A run the trial never started is no error."""
    client = store.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = (
        f"tags.sweep_id = {store.literal(study, 'study')} and tags.sweep_trial = '{int(trial)}' "
        "and attributes.status = 'RUNNING'"
    )
    ended = [run.info.run_id for run in client.search_runs([found.experiment_id], query, max_results=100)]
    for run_id in ended:
        client.set_tag(run_id, CLOSED_TAG, f"closed by mnist-mlp sweep: {reason}")
        client.set_terminated(run_id, status="KILLED")
    return ended
