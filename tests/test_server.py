"""The team's tracking server: the fail-fast checks (plain pytest), and everything against a real
`mlflow server` on PostgreSQL (marker `server`: `make test-server` after `make server-deps`)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from mnist_mlp.tracking import runs, store
from ops import server
from ops.processes import ManagedProcess
from ops.server import ServerError, Settings, free_port
from support.browser import wait_for_texts
from support.cli import cli_in_process, run
from support.faults import stage_in_process
from support.params import tiny_params
from support.paths import BIN, ROOT
from support.server import tracking_server

DVC, MNIST_MLP = str(BIN / "dvc"), str(BIN / "mnist-mlp")
FIX = "start it with `make server` or unset MLFLOW_TRACKING_URI"


@pytest.fixture(autouse=True)
def fresh_preflight(monkeypatch):
    """Each test checks its URIs anew (the check is once per process and URI)."""
    monkeypatch.setattr(store, "_answered", set())


# --- fail fast: no server needed -----------------------------------------------------------------


@pytest.mark.bad_input
def test_a_tracking_uri_that_does_not_answer_fails_in_seconds_naming_it():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(store.TrackingServerError) as caught:
        store.check_tracking_server(uri)
    assert time.monotonic() - started < store.PREFLIGHT_TIMEOUT
    assert str(caught.value) == f"{uri}: MLflow tracking server not answering (connection refused); {FIX}"


@pytest.mark.bad_input
def test_training_against_a_dead_server_stops_before_the_first_epoch(tiny_processed, tmp_path, monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tiny_params(tmp_path / "params.yaml")
    started = time.monotonic()
    outcome = stage_in_process(
        "train",
        ["--params", "params.yaml", "--data", str(tiny_processed), "--model", "model.pt", "--log", "log.csv"],
        tmp_path,
        capsys,
        monkeypatch,
    )
    assert time.monotonic() - started < 30
    assert outcome.code == 1 and outcome.error_lines("train") == [
        f"train: error: {uri}: MLflow tracking server not answering (connection refused); {FIX}"
    ]
    assert "epoch" not in outcome.out and not (tmp_path / "model.pt").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "argv, name",
    [
        (["close-stale-runs"], "close-stale-runs"),
        (["serve", "--model-uri", "models:/mnist-mlp@champion"], "serve"),
        (["predict", "--model", "models:/mnist-mlp@champion", "digit.png"], "predict"),
        (["promote", "--version", "1", "--rules", str(ROOT / "metrics_rules.yaml")], "promote"),
        (["compare"], "compare"),
    ],
)
def test_every_command_on_a_dead_server_is_one_line_in_seconds(argv, name, monkeypatch, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    code, out, err = cli_in_process(argv, capsys)
    assert time.monotonic() - started < 10
    assert code == 1 and err.splitlines() == [
        f"mnist-mlp {name}: error: {uri}: MLflow tracking server not answering (connection refused); {FIX}"
    ], err


@pytest.mark.bad_input
def test_a_web_server_that_is_not_mlflow_is_named_as_such():
    class NotMlflow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), NotMlflow)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{web.server_port}"
    try:
        with pytest.raises(store.TrackingServerError, match=r"not an MLflow tracking server \(HTTP 404 at /health\)"):
            store.check_tracking_server(uri)
    finally:
        web.shutdown()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "env, expected",
    [
        ({"SERVER_PORT": "70000"}, "SERVER_PORT='70000': expected a port number from 1 to 65535"),
        ({"SERVER_DB": "postgresql+psycopg://mlflow:hunter2@127.0.0.1/mlflow"}, "SERVER_DB holds a password"),
        ({"SERVER_DB": "sqlite:///mlflow.db"}, "expected postgresql+psycopg://<role>@<host>:<port>/<database>"),
        (
            {"SERVER_DB": "postgresql+psycopg://mlflow@127.0.0.1/ml-flow"},
            "database 'ml-flow': expected lowercase letters",
        ),
    ],
)
def test_server_settings_are_checked_with_one_line(env, expected):
    with pytest.raises(ServerError) as caught:
        Settings.from_env(env)
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_secrets_are_generated_once_into_a_private_file_and_the_environment_wins(tmp_path, monkeypatch):
    path = tmp_path / "config" / "server.env"
    monkeypatch.setenv("MNIST_MLP_SERVER_ENV", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-environment")
    for key in ("MLFLOW_DB_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    first = server.ensure_secrets()
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert first["MLFLOW_AUTH_ADMIN_PASSWORD"] == "from-the-environment"
    assert "from-the-environment" not in path.read_text()  # only generated values are written
    assert len(first["MLFLOW_DB_PASSWORD"]) >= 32
    assert server.ensure_secrets() == first  # idempotent: the stored values are kept
    path.chmod(0o644)
    with pytest.raises(ServerError, match=f"{path}: readable by other users; `chmod 600 {path}`"):
        server.read_secrets()


@pytest.mark.bad_input
def test_make_server_says_so_when_postgresql_is_down(tmp_path):
    """`make server` checks its backend store before starting mlflow: one line, exit 1, in seconds."""
    dead = free_port()
    env = {
        **os.environ,
        "SERVER_DB": f"postgresql+psycopg://mlflow@127.0.0.1:{dead}/mlflow",
        "SERVER_PORT": str(free_port()),
        "MLFLOW_DB_PASSWORD": "any",
        "SERVER_ARTIFACTS": str(tmp_path / "artifacts"),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ops.server", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"server run: error: PostgreSQL at 127.0.0.1:{dead} is not answering (connection refused); "
        "start it with `make server-deps` (as root) or `pg_ctlcluster <version> main start`"
    ]


def test_the_server_command_holds_no_secret_and_passes_extra_options(monkeypatch):
    monkeypatch.setenv("MLFLOW_DB_PASSWORD", "s3cret")
    settings = Settings.from_env(
        {"SERVER_OPTIONS": "--allowed-hosts mlflow.example.com", "SERVER_ARTIFACTS": "s3://bucket/mlflow"}
    )
    command, env = server.server_command(settings)
    assert (
        "s3cret" not in " ".join(command) and env["PGPASSWORD"] == "s3cret"
    )  # libpq reads it; no URI or argv shows it
    assert command[-2:] == ["--allowed-hosts", "mlflow.example.com"]
    assert command[command.index("--artifacts-destination") + 1] == "s3://bucket/mlflow"


def test_the_setup_sql_creates_only_what_is_missing():
    sql = server.setup_sql(Settings.from_env({}), "it's")
    assert "ALTER ROLE mlflow LOGIN CREATEDB PASSWORD 'it''s';" in sql  # quoted, and sent on psql's stdin
    assert sql.count("WHERE NOT EXISTS") == 4 and sql.count("\\gexec") == 4  # role, mlflow, mlflow_auth, mlflow_studies


# --- against a real server on PostgreSQL ----------------------------------------------------------


def client_env(server_process, **extra: str) -> dict[str, str]:
    return {**os.environ, **server_process.env, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.server
def test_server_deps_twice_changes_nothing(pg_server):
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "ops.server", "deps"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert (
            "role mlflow, databases mlflow, mlflow_auth and mlflow_studies ready" in done.stdout
            and "generated" not in done.stdout
        )


@pytest.mark.server
@pytest.mark.bad_input
def test_make_server_names_a_wrong_database_password(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_DB_PASSWORD": "wrong",
        "SERVER_PORT": str(free_port()),
        "SERVER_ARTIFACTS": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ops.server", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    (line,) = done.stderr.splitlines()
    assert done.returncode == 1 and line.startswith(
        "server run: error: PostgreSQL at 127.0.0.1:5432 refused role mlflow"
    )
    assert "password authentication failed" in line and "`make server-deps` (as root)" in line


@pytest.mark.server
def test_server_start_prints_the_uri_and_stop_ends_it(pg_server, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "SERVER_PORT": str(port),
        "SERVER_DB": pg_server.settings.db,
        "SERVER_ARTIFACTS": str(tmp_path),
        "SERVER_WORKERS": "1",
        "PYTHONPATH": str(ROOT),
    }
    # cwd: its pid and log go to <project>/build/server, here the temp folder; PYTHONPATH: ops/ is not
    # installed, `make` runs it from the project's root
    started = subprocess.run(
        [sys.executable, "-m", "ops.server", "start"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert started.returncode == 0, started.stderr
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
    assert server.health(f"http://127.0.0.1:{port}")
    again = subprocess.run(
        [sys.executable, "-m", "ops.server", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and f"an MLflow server already answers at http://127.0.0.1:{port}" in again.stderr
    stopped = subprocess.run(
        [sys.executable, "-m", "ops.server", "stop"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not server.health(f"http://127.0.0.1:{port}")

    # `make server` in the foreground: SIGTERM (or Ctrl-C, SIGHUP) stops mlflow server and its workers too
    foreground = subprocess.Popen(
        [sys.executable, "-m", "ops.server", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in foreground.stdout:
        if "ready" in line:
            break
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in line and server.health(f"http://127.0.0.1:{port}")
    foreground.terminate()
    assert foreground.wait(timeout=120) == 0 and "server: stopped" in foreground.stdout.read()
    assert not server.health(f"http://127.0.0.1:{port}")
    assert server._port_free("127.0.0.1", port)  # no worker left holding the port


@pytest.mark.server
def test_the_pipeline_registry_and_serving_against_the_server(project, pg_server, browser, tmp_path, monkeypatch):
    """dvc repro, dvc exp run, promote, predict and serve with models:/ and runs:/, compare, close-stale-runs, the UI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server.uri)
    run([DVC, "repro"], project)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    store = mlflow.MlflowClient(pg_server.uri)
    trained = store.get_run(metrics["mlflow_run_id"])
    assert trained.info.status == "FINISHED" and trained.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert trained.data.metrics["test_accuracy"] == metrics["test"]["accuracy"]

    (project / "rules.yaml").write_text(
        yaml.safe_dump({"metrics": {"test.accuracy": {"better": "higher", "abs_tolerance": 0.002}}})
    )
    promoted = run([MNIST_MLP, "promote", "--rules", "rules.yaml"], project).stdout
    assert promoted.startswith("promote: mnist-mlp@champion -> version 1 (run " + metrics["mlflow_run_id"])

    out = run([DVC, "exp", "run", "-S", "train.dropout=0.5"], project).stdout
    assert "Running stage 'train'" in out
    experiment_runs = store.search_runs([trained.info.experiment_id], "tags.dvc_exp_name != 'workspace'")
    (exp_run,) = experiment_runs
    assert exp_run.info.status == "FINISHED" and exp_run.data.params["train.dropout"] == "0.5"
    assert store.get_model_version("mnist-mlp", "2").run_id == exp_run.info.run_id

    from support.digit_images import picture, save_picture

    image = save_picture(picture(3, "black-on-white"), tmp_path / "digit.png")
    for model in ("models:/mnist-mlp@champion", f"runs:/{exp_run.info.run_id}/model"):
        answer = json.loads(run([MNIST_MLP, "predict", "--json", "--model", model, str(image)], project).stdout)
        assert len(answer["predictions"][0]["top_k"]) == 3, answer

    compared = run([MNIST_MLP, "compare", "--all"], project).stdout
    assert "wrote" in compared and "(2 runs" in compared

    assert "0 stale run(s) closed" in run([MNIST_MLP, "close-stale-runs"], project).stdout

    # the UI the server ships, in headless Chromium: both runs, and the registered model's champion
    browser.get(f"{pg_server.uri}/#/experiments/{trained.info.experiment_id}/runs")
    wait_for_texts(browser, [trained.info.run_name, exp_run.info.run_name])  # relu-do0.2-s0, relu-do0.5-s0
    browser.get(f"{pg_server.uri}/#/models/mnist-mlp")
    wait_for_texts(browser, ["Version 1", "Version 2", "champion"])

    port = free_port()
    body = json.dumps({"inputs": [[0.0] * 784, [1.0] * 784]}).encode()
    answers: list = []

    def predicts() -> bool:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append(json.load(response)["predictions"])
        return True

    with ManagedProcess(
        [MNIST_MLP, "serve", "--model-uri", "models:/mnist-mlp@champion", "--port", str(port)],
        log=tmp_path / "serve.log",
        cwd=project,
    ) as serving:
        serving.wait_until(predicts, timeout=300, interval=1)
    (predictions,) = answers
    assert len(predictions) == 2 and all(abs(sum(row) - 1) < 1e-4 for row in predictions)


def train_stage(project: Path, env: dict, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "stages/train.py",
        "--data",
        "data/processed",
        "--model",
        f"{log.stem}.pt",
        "--log",
        f"{log.stem}.csv",
    ]
    return subprocess.Popen(
        command, cwd=project, env={**env, "PYTHONPATH": "src"}, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


@pytest.mark.server
@pytest.mark.fault
def test_eight_concurrent_trainings_lose_no_run_and_no_metric(project, pg_server, tmp_path):
    run([DVC, "repro", "preprocess"], project)
    env = client_env(pg_server)
    trainings = [train_stage(project, env, tmp_path / f"train{index}.log") for index in range(8)]
    assert [process.wait(timeout=900) for process in trainings] == [0] * 8, [
        (tmp_path / f"train{i}.log").read_text()[-2000:] for i in range(8)
    ]
    store = mlflow.MlflowClient(pg_server.uri)
    experiment = store.get_experiment_by_name("mnist-mlp")
    run_ids = [
        line.rsplit(" ", 1)[-1]
        for index in range(8)
        for line in (tmp_path / f"train{index}.log").read_text().splitlines()
        if "MLflow run" in line
    ]
    assert len(set(run_ids)) == 8
    epochs = yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"]
    for run_id in run_ids:
        found = store.get_run(run_id)
        assert found.info.status == "FINISHED" and found.info.experiment_id == experiment.experiment_id
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert [m.step for m in store.get_metric_history(run_id, name)] == list(range(1, epochs + 1)), name
        assert {"best_val_accuracy", "best_epoch", "train_seconds"} <= set(found.data.metrics)


def logging_run(env: dict, epochs: int, pause: float) -> subprocess.Popen:
    """The load benchmark's worker: one training's logging through runs.training_run, `epoch N` per epoch."""
    go = Path(env["GO"])
    go.touch()
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "server_load.py"),
        "worker",
        "--epochs",
        str(epochs),
        "--go",
        str(go),
        "--pause",
        str(pause),
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.server
@pytest.mark.fault
def test_a_run_survives_a_server_restart_with_all_its_metrics(pg_server, tmp_path):
    worker = logging_run(client_env(pg_server, GO=str(tmp_path / "go")), epochs=12, pause=0.5)
    for line in worker.stdout:
        if line.strip() == "epoch 4":
            pg_server.restart()
            break
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err
    run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
    store = mlflow.MlflowClient(pg_server.uri)
    assert store.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(run_id, "val_loss")] == list(range(1, 13))


@pytest.mark.server
@pytest.mark.fault
def test_a_server_gone_for_good_is_one_line_and_close_stale_runs_ends_the_run(tmp_path):
    with tracking_server(tmp_path / "server") as scratch:
        # few retries: the default (7, about 4 minutes) would carry it over any restart
        env = client_env(
            scratch,
            GO=str(tmp_path / "go"),
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        )
        worker = logging_run(env, epochs=20, pause=0.5)
        for line in worker.stdout:
            if line.strip() == "epoch 3":
                scratch.stop()
                break
        _, err = worker.communicate(timeout=300)
        (line,) = [line for line in err.splitlines() if "error" in line]
        assert worker.returncode == 1 and "Traceback" not in err
        assert line.startswith(f"server_load: error: {scratch.uri}: cannot end MLflow run ")
        assert line.endswith("it stays RUNNING there until `mnist-mlp close-stale-runs` ends it")
        run_id = line.split("cannot end MLflow run ")[1].split()[0]

        scratch.start()
        closed = subprocess.run(
            [MNIST_MLP, "close-stale-runs"], env=client_env(scratch), capture_output=True, text=True, timeout=300
        )
        assert f"closed run {run_id}" in closed.stdout, closed.stderr
        assert mlflow.MlflowClient(scratch.uri).get_run(run_id).info.status == "KILLED"


@pytest.mark.server
@pytest.mark.bad_input
def test_basic_auth_wrong_or_missing_credentials_are_one_line(tmp_path, monkeypatch):
    with tracking_server(tmp_path / "server", auth=True) as scratch:
        for user, password, who in (
            (None, None, "no MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
            ("admin", "wrong", "user 'admin'"),
        ):
            for key, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
                monkeypatch.setenv(key, value) if value else monkeypatch.delenv(key, raising=False)
            store._answered.clear()
            with pytest.raises(store.TrackingServerError) as caught:
                store.check_tracking_server(scratch.uri)
            assert str(caught.value) == (
                f"{scratch.uri}: the tracking server refused the credentials (HTTP 401, {who}); "
                "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an MLflow user"
            )
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.read_secrets()["MLFLOW_AUTH_ADMIN_PASSWORD"])
        monkeypatch.setenv("MLFLOW_TRACKING_URI", scratch.uri)
        store._answered.clear()
        with runs.training_run("authenticated", {"a": 1}, {}) as logged:
            logged.log_metrics({"m": 1.0})
        assert store.client().get_run(logged.run_id).info.status == "FINISHED"
