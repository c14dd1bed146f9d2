"""Closing MLflow runs that a crash left RUNNING (`kill -9`, a power cut, an OOM kill).

A run started by this project is tagged with its host and process id. A RUNNING run
whose process is gone from this host is stale at any age; a run from another host (or
without the tags) is only taken for stale once it started more than `older_than` ago,
because a teammate's long training may still be alive there.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Optional

import psutil

from mnist_mlp import tracking

CLOSED_TAG = "mnist_mlp.closed_stale"


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    experiment: str
    run_name: str
    reason: str


def _process_state(tags: dict[str, str]) -> Optional[bool]:
    """True: its process is alive on this host; False: gone from this host; None: cannot tell."""
    if tags.get("mnist_mlp.host") != socket.gethostname() or not tags.get("mnist_mlp.pid", "").isdigit():
        return None
    return psutil.pid_exists(int(tags["mnist_mlp.pid"]))


def find_stale_runs(older_than_minutes: float, now: Optional[float] = None) -> list[StaleRun]:
    client = tracking.client()
    cutoff_ms = ((now or time.time()) - older_than_minutes * 60) * 1000
    stale = []
    for experiment in client.search_experiments():
        token = None
        while True:
            page = client.search_runs(
                [experiment.experiment_id], "attributes.status = 'RUNNING'", max_results=1000, page_token=token
            )
            for run in page:
                alive = _process_state(run.data.tags)
                if alive is False:
                    reason = f"its process {run.data.tags['mnist_mlp.pid']} on this host is gone"
                elif alive is None and run.info.start_time < cutoff_ms:
                    reason = f"started over {older_than_minutes:g} minutes ago"
                else:
                    continue
                stale.append(StaleRun(run.info.run_id, experiment.name, run.info.run_name or "", reason))
            token = page.token
            if not token:
                break
    return stale


def close_stale_runs(older_than_minutes: float, dry_run: bool = False) -> list[StaleRun]:
    """End each stale run KILLED, with a tag saying why; return them."""
    stale = find_stale_runs(older_than_minutes)
    if not dry_run:
        client = tracking.client()
        for run in stale:
            client.set_tag(run.run_id, CLOSED_TAG, f"closed by mnist-mlp close-stale-runs: {run.reason}")
            client.set_terminated(run.run_id, status="KILLED")
    return stale
