"""Security: no file runs code when loaded, servers bind 127.0.0.1, credentials never leak."""

from __future__ import annotations

import base64
import http.server
import os
import pickle
import re
import shlex
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from ops.processes import ManagedProcess, free_port
from support.cli import run
from support.faults import assert_one_clear_error, stage_in_process
from support.mnist_files import write_checksums, write_tiny_mnist
from support.params import tiny_params
from support.paths import BIN, ROOT

SERVER_COMMAND = re.compile(r"mlflow (ui|server|models serve)|mnist-mlp serve|http\.server|uvicorn|gunicorn")


class _WritesAMarker:
    """Unpickling this calls Path.touch(marker): arbitrary code, as an attacker's model file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted(path: Path, marker: Path, as_checkpoint: bool) -> Path:
    payload = (
        {"format_version": 1, "state_dict": {}, "exploit": _WritesAMarker(marker)}
        if as_checkpoint
        else {
            "images": torch.zeros(1, 28, 28, dtype=torch.uint8),
            "labels": torch.zeros(1, dtype=torch.long),
            "mean": torch.tensor(0.0),
            "std": torch.tensor(1.0),
            "exploit": _WritesAMarker(marker),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_the_crafted_file_would_run_code_if_unpickled(tmp_path):
    """The premise of the two tests below: a plain torch.load of this file creates the marker."""
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "model.pt", marker, as_checkpoint=True)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_WritesAMarker(marker)))
    assert marker.exists()


@pytest.mark.bad_input
def test_evaluate_refuses_a_model_file_that_would_run_code(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    _crafted(tmp_path / "models/model.pt", marker, as_checkpoint=True)
    tiny_params(tmp_path / "params.yaml")
    outcome = stage_in_process("evaluate", ["--reports", "reports"], tmp_path, capsys, monkeypatch)
    assert_one_clear_error(
        outcome,
        "evaluate",
        "models/model.pt: refused to load: not a plain-tensor checkpoint",
        "expected a models/model.pt written by the train stage",
    )
    assert not marker.exists()
    assert not (tmp_path / "reports").exists()


@pytest.mark.bad_input
def test_train_refuses_a_cached_split_that_would_run_code(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    for split in ("train", "val"):
        _crafted(tmp_path / "data/processed" / f"{split}.pt", marker, as_checkpoint=False)
    tiny_params(tmp_path / "params.yaml")
    outcome = stage_in_process("train", [], tmp_path, capsys, monkeypatch)
    assert_one_clear_error(outcome, "train", "data/processed/train.pt: not a cached split written by preprocess")
    assert not marker.exists()
    assert not (tmp_path / "models").exists()


def _make_dry_run(target: str) -> list[str]:
    result = run(["make", "-n", target], ROOT)
    return [line for line in result.stdout.splitlines() if SERVER_COMMAND.search(line)]


def _server_targets() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    targets = []
    for match in re.finditer(r"^([A-Za-z][\w-]*):[^\n=]*\n((?:\t[^\n]*\n?)*)", text, re.MULTILINE):
        name, recipe = match.groups()
        assert "$(MAKE)" not in recipe or not SERVER_COMMAND.search(recipe), f"{name}: recursive make; check by hand"
        if SERVER_COMMAND.search(recipe):
            targets.append(name)
    return targets


def test_every_make_target_that_starts_a_server_binds_127_0_0_1():
    targets = _server_targets()
    assert "ui" in targets
    for target in targets:
        lines = _make_dry_run(target)
        assert lines, f"make -n {target} printed no server command"
        for line in lines:
            argv = shlex.split(line)
            hosts = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--host", "-h")]
            if "mnist-mlp" in line and not hosts:
                from mnist_mlp.cli import build_parser

                hosts = [build_parser().parse_args(["serve"]).host]  # its default
            assert hosts == ["127.0.0.1"], f"make {target}: {line}"


def test_mnist_mlp_serve_passes_its_host_to_mlflow():
    from mnist_mlp.cli import build_parser
    from mnist_mlp.serving.rest import serve_command

    args = build_parser().parse_args(["serve", "--model-uri", "runs:/abc/model"])
    command = serve_command(args.model_uri, args.host, args.port)
    assert command[command.index("-h") + 1] == "127.0.0.1"


USER, PASSWORD = "alice", "s3cret-Pa55"


class _BasicAuthMirror(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_error(401, "Unauthorized")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def private_mirror(tmp_path):
    """A local mirror behind HTTP basic auth: the URL to use carries the user and password."""
    folder = write_tiny_mnist(tmp_path / "mirror-files", train_count=300, test_count=60)
    write_checksums(folder, tmp_path / "checksums.yaml")
    handler = lambda *a, **k: _BasicAuthMirror(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{USER}:{PASSWORD}@127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.bad_input
def test_a_mirror_behind_basic_auth_downloads_and_never_shows_the_password(
    tmp_path, private_mirror, capsys, monkeypatch
):
    tiny_params(tmp_path / "params.yaml")
    monkeypatch.setenv("MNIST_MIRROR", private_mirror)
    monkeypatch.setenv("MNIST_CHECKSUMS", str(tmp_path / "checksums.yaml"))
    monkeypatch.setenv("MNIST_OFFICIAL_MIRRORS", "none")
    outcome = stage_in_process("download", ["--out", "data/raw"], tmp_path, capsys, monkeypatch)
    assert outcome.code == 0, outcome.err
    assert len(list((tmp_path / "data/raw").iterdir())) == 4
    assert PASSWORD not in outcome.out + outcome.err and USER not in outcome.out + outcome.err

    wrong = private_mirror.replace(PASSWORD, "wrong-password")
    monkeypatch.setenv("MNIST_MIRROR", wrong)
    (tmp_path / "data/raw/train-images-idx3-ubyte").unlink()
    outcome = stage_in_process("download", ["--out", "data/raw"], tmp_path, capsys, monkeypatch)
    line = assert_one_clear_error(outcome, "download", "HTTP Error 401: Unauthorized")
    assert "wrong-password" not in outcome.out + outcome.err and USER not in line


@pytest.mark.slow
def test_a_pipeline_from_a_private_mirror_leaves_the_password_nowhere(project, private_mirror, monkeypatch):
    monkeypatch.setenv("MNIST_MIRROR", private_mirror)
    monkeypatch.setenv("MNIST_CHECKSUMS", str(Path(private_mirror and project.parent / "checksums.yaml")))
    result = run([str(BIN / "dvc"), "repro"], project)
    assert PASSWORD not in result.stdout + result.stderr
    # every byte the run left: outputs, dvc.lock, DVC cache, the MLflow store and its artifacts
    leaked = [
        str(p)
        for folder in (project, project.parent / "store")
        for p in folder.rglob("*")
        if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaked == []
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project.parent / 'store' / 'mlflow.db'}")
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    for value in [*mlflow_run.data.params.values(), *mlflow_run.data.tags.values()]:
        assert PASSWORD not in value and f"{USER}:" not in value
    assert mlflow_run.info.status == "FINISHED"
    subprocess.run(["true"])  # keeps the process table tidy for the signal tests in the same session


@pytest.mark.slow
def test_the_documented_team_server_refuses_anonymous_requests(tmp_path):
    """The README's recipe: `mlflow server --app-name basic-auth`, secrets from the environment."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key-0123456789",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-Pa55-from-env",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        BIN / "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        tmp_path / "mlartifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"

    def anonymous_status() -> int | None:
        """The HTTP status an anonymous request gets; None while nothing answers."""
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, ConnectionError):
            return None

    with ManagedProcess(command, log=tmp_path / "server.log", env=env, cwd=tmp_path, name="mlflow server") as server:
        server.wait_until(lambda: anonymous_status() is not None, timeout=240)
        assert anonymous_status() == 401, "an anonymous request was answered"
        token = base64.b64encode(b"admin:admin-Pa55-from-env").decode()
        request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
