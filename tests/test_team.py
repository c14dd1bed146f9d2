"""A team of two clones on one bare git remote, one DVC folder remote and one MLflow server (PostgreSQL).

Alice trains and pushes; Bob's fresh clone pulls the model with `dvc pull`. Alice's experiment reaches
Bob through `dvc exp push` / `dvc exp pull` with its metrics, model and MLflow run. Alice starts a 12-point
study (Optuna, on the same PostgreSQL) with two workers, Bob joins it with two more; one of Alice's workers
is SIGKILLed mid-trial: its trial is retried elsewhere, its MLflow run ends KILLED, every point is COMPLETE
exactly once, and `dvc exp pull` in either clone brings all 12 experiments. Bob promotes Alice's experiment
to `champion`. Needs `make server-deps` (PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from mnist_mlp.files import md5_of
from support.cli import run
from support.paths import BIN

pytestmark = pytest.mark.server

DVC = str(BIN / "dvc")
MNIST_MLP = str(BIN / "mnist-mlp")
ACTIVATIONS = ["relu", "tanh", "sigmoid"]
DROPOUTS = ["0.0", "0.5"]
SEEDS = ["0", "1"]
STUDY = "team-study"
EXPERIMENT = "alice-dropout"


def dvc(repo: Path, *args: str) -> str:
    return run([DVC, *args], repo).stdout


def clone(origin: Path, into: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(into)], into.parent)
    return into


def experiment_row(repo: Path, name: str) -> dict:
    """`dvc exp show --json`'s entry of experiment `name`."""
    rows = [
        rev
        for baseline in json.loads(dvc(repo, "exp", "show", "--json"))
        for group in baseline.get("experiments") or []
        for rev in group["revs"]
        if rev["name"] == name
    ]
    assert len(rows) == 1, f"{name} in dvc exp show: {len(rows)} times"
    return rows[0]["data"]


def sweep(repo: Path, log: Path, *how: str) -> subprocess.Popen:
    """`mnist-mlp sweep` of the 12-point grid (1 epoch) on two workers, pushing each experiment, in the background."""
    command = [MNIST_MLP, "sweep", "--study", STUDY, "--jobs", "2", "--push", "origin", *how]
    return subprocess.Popen(command, cwd=repo, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def kill_a_worker_mid_trial(client: mlflow.MlflowClient, experiment_id: str, repo: Path, timeout: float = 300) -> str:
    """SIGKILL a worker of `repo` whose trial's MLflow run is RUNNING, with everything it started (its `dvc exp
    run`, the stage): a machine gone. Returns the run's id."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in client.search_runs(
            [experiment_id], f"tags.sweep_id = '{STUDY}' and attributes.status = 'RUNNING'"
        ):
            try:  # the train stage's process, under a worker (`python -m mnist_mlp.sweeps.worker`) in `repo`
                stage = psutil.Process(int(found.data.tags["mnist_mlp.pid"]))
                worker = next(
                    (p for p in stage.parents() if "mnist_mlp.sweeps.worker" in p.cmdline() and Path(p.cwd()) == repo),
                    None,
                )
                if worker is None:
                    continue
                doomed = [worker, *worker.children(recursive=True)]
            except psutil.Error:
                continue
            for process in doomed:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal.SIGKILL)
            return found.info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no trial of {repo.name} was running within {timeout} s")


@pytest.fixture
def team(project: Path, tmp_path: Path, pg_server, monkeypatch) -> Iterator[tuple[Path, Path]]:
    """(alice, bob): clones of the project pushed to a bare git remote with a committed DVC folder remote;
    Alice has trained the pipeline and pushed it (git and DVC); Bob's clone is fresh."""
    for key, value in pg_server.env.items():
        monkeypatch.setenv(key, value)
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    dvc(project, "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))
    run(["git", "commit", "-qm", "DVC remote", ".dvc/config"], project)
    run(["git", "push", "-q", str(origin), "main"], project)

    alice = clone(origin, tmp_path / "alice")
    dvc(alice, "repro")
    run(["git", "add", "-A"], alice)
    run(["git", "commit", "-qm", "trained"], alice)
    run(["git", "push", "-q", "origin", "main"], alice)
    dvc(alice, "push")
    bob = clone(origin, tmp_path / "bob")
    yield alice, bob


@pytest.mark.fault
def test_two_clones_share_model_experiment_and_one_study_that_survives_a_killed_worker(team, pg_server, tmp_path: Path):
    alice, bob = team
    server = mlflow.MlflowClient(pg_server.uri)
    timings = {}

    # Bob gets Alice's model without training it
    started = time.monotonic()
    dvc(bob, "pull")
    assert md5_of(bob / "models" / "model.pt") == md5_of(alice / "models" / "model.pt")
    assert json.loads(dvc(bob, "status", "--json")) == {}
    timings["dvc pull"] = time.monotonic() - started

    # Alice's experiment reaches Bob through the git and DVC remotes
    started = time.monotonic()
    dvc(alice, "exp", "run", "--temp", "-n", EXPERIMENT, "-S", "train.dropout=0.5")
    pushed = experiment_row(alice, EXPERIMENT)
    dvc(alice, "exp", "push", "origin", EXPERIMENT)
    assert EXPERIMENT in dvc(bob, "exp", "list", "origin", "--name-only").split()
    dvc(bob, "exp", "pull", "origin", EXPERIMENT)
    pulled = experiment_row(bob, EXPERIMENT)
    assert pulled["params"]["params.yaml"]["data"]["train"]["dropout"] == 0.5
    metrics = pulled["metrics"]["reports/metrics.json"]["data"]
    assert metrics == pushed["metrics"]["reports/metrics.json"]["data"]
    logged = server.get_run(metrics["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.data.tags["dvc_exp_name"] == EXPERIMENT
    assert logged.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    timings["exp run + push + pull"] = time.monotonic() - started

    # one study, two machines, four workers; one of Alice's is killed mid-trial
    started = time.monotonic()
    logs = [tmp_path / "alice-sweep.log", tmp_path / "bob-sweep.log"]
    grid = ["--activations", *ACTIVATIONS, "--dropouts", *DROPOUTS, "--seeds", *SEEDS, "--set", "train.epochs=1"]
    workers = [sweep(alice, logs[0], *grid)]
    deadline = time.monotonic() + 120
    while "more machines" not in logs[0].read_text() and time.monotonic() < deadline:  # the study is made
        time.sleep(0.5)
    workers.append(sweep(bob, logs[1], "--join"))
    experiment_id = server.get_experiment_by_name("mnist-mlp").experiment_id
    killed = kill_a_worker_mid_trial(server, experiment_id, alice)
    try:
        codes = [process.wait(timeout=1800) for process in workers]
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(outputs)
    timings["12-point study, 4 workers, one killed"] = time.monotonic() - started
    trials = optuna.load_study(study_name=STUDY, storage=pg_server.env["STUDY_STORAGE"]).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = [(t.params["train.activation"], t.params["train.dropout"], t.params["train.seed"]) for t in complete]
    assert sorted(points) == sorted(
        (a, float(d), int(s)) for a in ACTIVATIONS for d in DROPOUTS for s in SEEDS
    )  # each once
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and any(t.system_attrs.get("retry_history") == [failed[0].number] for t in complete)
    assert "lost its worker" in "".join(outputs)
    runs = server.search_runs([experiment_id], f"tags.sweep_id = '{STUDY}'", max_results=100)
    by_status = {
        status: sorted(r.info.run_id for r in runs if r.info.status == status)
        for status in ("FINISHED", "KILLED", "RUNNING")
    }
    assert by_status["KILLED"] == [killed] and not by_status["RUNNING"] and len(by_status["FINISHED"]) == 12
    assert {r.data.tags["sweep_trial"] for r in runs if r.info.status == "FINISHED"} == {
        str(t.number) for t in complete
    }
    names = {t.user_attrs["dvc_exp_name"] for t in complete}
    for repo in (alice, bob):  # every clone gets every experiment, whoever ran it
        dvc(repo, "exp", "pull", "origin", *sorted(names))
        assert names <= set(dvc(repo, "exp", "list", "--name-only").split())
    compared = run([MNIST_MLP, "compare", "--study", STUDY], bob).stdout
    assert f"(12 runs, sweep {STUDY})" in compared
    timings["exp pull + compare"] = time.monotonic() - started - timings["12-point study, 4 workers, one killed"]

    # Bob restores Alice's experiment in his workspace and promotes its model
    started = time.monotonic()
    dvc(bob, "exp", "apply", EXPERIMENT)
    dvc(bob, "pull")
    assert md5_of(bob / "models" / "model.pt") == pushed["outs"]["models/model.pt"]["hash"]
    assert json.loads((bob / "reports" / "metrics.json").read_text())["mlflow_run_id"] == logged.info.run_id
    rules = tmp_path / "rules.yaml"
    rules.write_text("metrics:\n  test.accuracy:\n    better: higher\n")
    promoted = run([MNIST_MLP, "promote", "--rules", str(rules)], bob).stdout
    assert promoted.startswith("promote: mnist-mlp@champion -> version ") and f"(run {logged.info.run_id}," in promoted
    assert server.get_model_version_by_alias("mnist-mlp", "champion").run_id == logged.info.run_id
    timings["apply + pull + promote"] = time.monotonic() - started
    print("team test timings (s): " + ", ".join(f"{step} {seconds:.0f}" for step, seconds in timings.items()))
