"""runs.py (`mnist-mlp close-stale-runs`) on a real SQLite MLflow store with runs a crash left RUNNING."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import mlflow
import pytest

from mnist_mlp.tracking.stale import CLOSED_TAG
from support.cli import cli_in_process
from support.stores import new_experiment


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.fault
def test_close_stale_runs_closes_crashed_runs_and_spares_live_ones(mlflow_store, capsys):
    client = mlflow.MlflowClient(mlflow_store)
    experiment, other = new_experiment(client, "mnist-mlp"), new_experiment(client, "elsewhere")
    host, hour_ago = socket.gethostname(), int((time.time() - 3600) * 1000)
    runs = {
        "crashed here": client.create_run(experiment, tags={"mnist_mlp.host": host, "mnist_mlp.pid": str(_dead_pid())}),
        "alive here": client.create_run(
            experiment, start_time=hour_ago, tags={"mnist_mlp.host": host, "mnist_mlp.pid": str(os.getpid())}
        ),
        "old elsewhere": client.create_run(other, start_time=hour_ago - 1, tags={"mnist_mlp.host": "gpu-box"}),
        "recent elsewhere": client.create_run(experiment, tags={"mnist_mlp.host": "gpu-box", "mnist_mlp.pid": "1"}),
        "finished": client.create_run(experiment, start_time=hour_ago),
    }
    client.set_terminated(runs["finished"].info.run_id, "FINISHED")

    code, out, _ = cli_in_process(["close-stale-runs", "--dry-run"], capsys)
    assert code == 0 and "2 stale run(s) would close" in out
    assert client.get_run(runs["crashed here"].info.run_id).info.status == "RUNNING"

    code, out, _ = cli_in_process(["close-stale-runs", "--older-than", "30"], capsys)
    assert "2 stale run(s) closed" in out
    old = runs["old elsewhere"].info
    assert f"closed run {old.run_id} (elsewhere/{old.run_name}) as KILLED: started over 30 minutes ago" in out
    status = {name: client.get_run(r.info.run_id).info.status for name, r in runs.items()}
    assert status == {
        "crashed here": "KILLED",
        "alive here": "RUNNING",
        "old elsewhere": "KILLED",
        "recent elsewhere": "RUNNING",
        "finished": "FINISHED",
    }
    tags = client.get_run(runs["crashed here"].info.run_id).data.tags
    assert tags[CLOSED_TAG].startswith("closed by mnist-mlp close-stale-runs: its process")
    assert "started over 30 minutes ago" in client.get_run(old.run_id).data.tags[CLOSED_TAG]

    code, out, _ = cli_in_process(["close-stale-runs"], capsys)  # nothing left to close
    assert "0 stale run(s) closed" in out
