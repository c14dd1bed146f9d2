"""A team of two clones on one bare git remote, one DVC folder remote and one MLflow server (PostgreSQL).

Alice trains and pushes; Bob's fresh clone pulls the model with `dvc pull`. Alice's experiment reaches
Bob through `dvc exp push` / `dvc exp pull` with its metrics, model and MLflow run. Both run their shard
of one 3x3 sweep at the same time, each on its own DVC queue: the server ends with 9 FINISHED runs of
that sweep. Bob promotes Alice's experiment to `champion`. Needs `make server-deps` (PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Iterator

import mlflow
import pytest

from support.cli import run
from support.paths import BIN
from mnist_mlp.files import md5_of

pytestmark = pytest.mark.server

DVC = str(BIN / "dvc")
MNIST_MLP = str(BIN / "mnist-mlp")
ACTIVATIONS = ["relu", "tanh", "sigmoid"]
DROPOUTS = ["0.0", "0.2", "0.5"]
SWEEP_ID = "team-sweep"
EXPERIMENT = "alice-dropout"


def dvc(repo: Path, *args: str) -> str:
    return run([DVC, *args], repo).stdout


def clone(origin: Path, into: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(into)], into.parent)
    return into


def experiment_row(repo: Path, name: str) -> dict:
    """`dvc exp show --json`'s entry of experiment `name`."""
    rows = [rev for baseline in json.loads(dvc(repo, "exp", "show", "--json"))
            for group in baseline.get("experiments") or [] for rev in group["revs"] if rev["name"] == name]  # fmt: skip
    assert len(rows) == 1, f"{name} in dvc exp show: {len(rows)} times"
    return rows[0]["data"]


def shard(repo: Path, part: str, log: Path) -> subprocess.Popen:
    """`mnist-mlp sweep --shard part` of the tiny 3x3 grid (1 epoch), in the background; output to `log`."""
    command = [MNIST_MLP, "sweep", "--shard", part, "--sweep-id", SWEEP_ID, "--activations", *ACTIVATIONS,
               "--dropouts", *DROPOUTS, "--set", "train.epochs=1", "--jobs", "1", "--poll", "2"]  # fmt: skip
    return subprocess.Popen(command, cwd=repo, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.fixture
def team(project: Path, tmp_path: Path, pg_server, monkeypatch) -> Iterator[tuple[Path, Path]]:
    """(alice, bob): clones of the project pushed to a bare git remote with a committed DVC folder remote;
    Alice has trained the pipeline and pushed it (git and DVC); Bob's clone is fresh. Afterwards no queue
    worker of theirs is left running, whatever the test did."""
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
    for repo in (alice, bob):
        run([DVC, "queue", "stop", "--kill"], repo, check=False)


def test_two_clones_share_model_experiment_and_one_sharded_sweep(team, pg_server, tmp_path: Path):
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

    # one sweep, two machines: each queues and runs its shard on its own DVC queue, at the same time
    started = time.monotonic()
    logs = [tmp_path / "alice-shard.log", tmp_path / "bob-shard.log"]
    shards = [shard(alice, "1/2", logs[0]), shard(bob, "2/2", logs[1])]
    try:
        codes = [process.wait(timeout=1800) for process in shards]
    finally:
        for process in shards:
            if process.poll() is None:
                process.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(outputs)
    timings["sharded sweep"] = time.monotonic() - started
    experiment_id = server.get_experiment_by_name("mnist-mlp").experiment_id
    runs = server.search_runs([experiment_id], f"tags.sweep_id = '{SWEEP_ID}'", max_results=100)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 9
    points = {(r.data.params["activation"], float(r.data.params["dropout"])) for r in runs}
    assert points == {(a, float(d)) for a in ACTIVATIONS for d in DROPOUTS}
    assert not server.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    # each clone ran its own part (its own DVC experiments), and together exactly the grid's runs
    parts = [set(dvc(repo, "exp", "list", "--name-only").split()) - {EXPERIMENT} for repo in (alice, bob)]
    assert parts[0] and parts[1] and parts[0].isdisjoint(parts[1])
    assert parts[0] | parts[1] == {r.data.tags["dvc_exp_name"] for r in runs}
    compared = run([MNIST_MLP, "compare", "--sweep-id", SWEEP_ID], bob).stdout
    assert f"(9 runs, sweep {SWEEP_ID})" in compared

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
