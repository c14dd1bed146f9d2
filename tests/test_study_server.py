"""A study on PostgreSQL whose database goes away under a running worker: the worker waits, goes on, and no
grid point is lost or COMPLETE twice. Needs `make server-deps` (PostgreSQL and the MLflow role)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from mnist_mlp.sweeps import definition as definitions
from mnist_mlp.sweeps import storage as studies
from ops import server

pytestmark = [pytest.mark.server, pytest.mark.fault]

POINTS = 8
# the project's worker loop (worker.take_trials) with an objective that sleeps instead of training
WORKER = """
import sys, time
from mnist_mlp.sweeps import definition as definitions, storage as studies, worker
loaded, definition = studies.load("away", studies.open_storage(sys.argv[1]))
worker.take_trials(loaded, definition, lambda trial: (definition.suggest(trial), time.sleep(1.5), 1.0)[-1], poll_s=0.5)
"""


@pytest.fixture
def database(monkeypatch):
    """A throwaway database on the machine's PostgreSQL, and admin SQL on it; dropped afterwards."""
    base = server.Settings.from_env({})
    password = server.read_secrets().get("MLFLOW_DB_PASSWORD")
    try:
        server.check_database(base, password)
    except server.ServerError as exc:
        pytest.fail(f"the server tests need `make server-deps` (as root) first: {exc}")
    name = f"mlflow_scratch_{secrets.token_hex(4)}"
    monkeypatch.setenv("PGPASSWORD", password or "")
    with server.connect(base, password) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield base.db_uri(name), name, admin
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _complete(url: str) -> int:
    trials = studies.load("away", studies.open_storage(url))[0].get_trials()
    return sum(trial.state == TrialState.COMPLETE for trial in trials)


def test_a_study_database_away_for_a_while_is_waited_for_and_nothing_is_lost(database):
    url, name, admin = database
    studies.create(
        "away",
        definitions.Definition("grid", "0" * 40, "away", {}, grid={"train.seed": list(range(POINTS))}),
        studies.open_storage(url),
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while _complete(url) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    # the database goes away: no new connection, every open one cut
    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    time.sleep(12)
    admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode == 0, output
    assert "the study storage does not answer" in output and "waiting" in output
    trials = studies.load("away", studies.open_storage(url))[0].get_trials()
    complete = sorted(trial.params["train.seed"] for trial in trials if trial.state == TrialState.COMPLETE)
    assert complete == list(range(POINTS)), [(t.number, t.state.name, t.params) for t in trials]  # each point once
    assert not [trial for trial in trials if trial.state in (TrialState.RUNNING, TrialState.WAITING)]
