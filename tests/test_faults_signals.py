"""Interrupted work: Ctrl-C, SIGTERM and `kill -9` during training or download, then `dvc repro`.

What must hold after each: no MLflow run left RUNNING (or `close-stale-runs` closes it),
the previous model and reports byte-for-byte intact, no temp file taken for an output,
and the next `dvc repro` completing with `dvc status` clean.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mnist_mlp.params import MAX_EPOCHS
from support.cli import run
from support.faults import (
    fresh_store,
    mlflow_runs,
    snapshot,
    stage_command,
    stage_env,
    stage_in_process,
    temp_leftovers,
)
from support.mnist_files import write_tiny_mnist
from support.params import set_train_params, tiny_params
from support.paths import BIN

FOREVER = MAX_EPOCHS  # the most params allow: the process is always signalled long before the end


def _wait_for_line(stream, prefix: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    for line in stream:
        seen.append(line)
        if line.startswith(prefix):
            return line
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no line starting {prefix!r} in:\n{''.join(seen)}")


def _as_in_a_terminal() -> None:
    # a shell without job control starts background jobs with SIGINT ignored, and a Python
    # started so never raises KeyboardInterrupt: give the child a terminal's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _started(command: list[str], cwd: Path, env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """The command in a session of its own: signals go to its process group, as a terminal's
    Ctrl-C does; whatever happens in the test, nothing of it outlives the test."""
    job = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        yield job
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_ends_the_run_killed_and_keeps_earlier_outputs(
    tmp_path, empty_mlflow_db, capsys, monkeypatch, signum
):
    raw = write_tiny_mnist(tmp_path / "raw", train_count=300, test_count=60, compress=False)
    tiny_params(tmp_path / "params.yaml", preprocess={"val_size": 60}, train={"epochs": FOREVER})
    assert (
        stage_in_process(
            "preprocess", ["--raw", str(raw), "--out", "data/processed"], tmp_path, capsys, monkeypatch
        ).code
        == 0
    )
    for relative, text in (("models/model.pt", "previous model"), ("reports/training_log.csv", "epoch\n1\n")):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_text(text)
    before = snapshot(tmp_path / "models", tmp_path / "reports")
    uri = fresh_store(empty_mlflow_db, tmp_path / "store")

    with _started(
        stage_command("train", []), tmp_path, stage_env(MLFLOW_TRACKING_URI=uri), tmp_path / "stderr.log"
    ) as job:
        _wait_for_line(job.stdout, "train: epoch   1/")
        os.kill(job.pid, signum)
        job.communicate(timeout=120)
    stderr = (tmp_path / "stderr.log").read_text()

    assert job.returncode == 130, stderr
    assert "train: interrupted; outputs of earlier runs are left as they were" in stderr
    assert "Traceback" not in stderr
    [mlflow_run] = mlflow_runs(uri)
    assert mlflow_run.info.status == "KILLED"
    assert snapshot(tmp_path / "models", tmp_path / "reports") == before
    assert temp_leftovers(tmp_path) == []


def _store_uri(project: Path) -> str:
    return f"sqlite:///{project.parent / 'store' / 'mlflow.db'}"


def _repro_is_clean(project: Path) -> None:
    run([str(BIN / "dvc"), "repro"], project)
    assert json.loads(run([str(BIN / "dvc"), "status", "--json"], project).stdout) == {}
    assert temp_leftovers(project / "data", project / "models", project / "reports") == []


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_dvc_repro_interrupted_in_training_then_repro_completes(project, signum):
    run([str(BIN / "dvc"), "repro"], project)
    outputs = [project / "models", project / "reports", project / "dvc.lock"]
    before = snapshot(*outputs)

    set_train_params(project, epochs=FOREVER)
    with _started([str(BIN / "dvc"), "repro"], project, dict(os.environ), project.parent / "dvc-stderr.log") as job:
        _wait_for_line(job.stdout, "train: epoch   1/")
        os.killpg(job.pid, signum)  # the whole group, as Ctrl-C in a terminal or an OOM kill of the job
        job.communicate(timeout=120)
    assert job.returncode != 0
    assert snapshot(*outputs) == before, "the interrupted run changed or deleted an earlier output"

    statuses = {r.info.run_id: r.info.status for r in mlflow_runs(_store_uri(project))}
    if signum == signal.SIGKILL:  # nobody could end the run: that is what close-stale-runs is for
        assert sorted(statuses.values()) == ["FINISHED", "RUNNING"]
        closed = run([str(BIN / "mnist-mlp"), "close-stale-runs"], project)
        assert "as KILLED: its process" in closed.stdout and "1 stale run(s) closed" in closed.stdout
    statuses = [r.info.status for r in mlflow_runs(_store_uri(project))]
    assert sorted(statuses) == ["FINISHED", "KILLED"]

    set_train_params(project, epochs=3)
    _repro_is_clean(project)
    assert sorted(r.info.status for r in mlflow_runs(_store_uri(project))) == ["FINISHED", "FINISHED", "KILLED"]


class _Stalling(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror, but the first file stops half-way, as a dying connection does."""

    release = threading.Event()

    def do_GET(self):
        path = Path(self.directory) / Path(self.path).name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.release.wait(timeout=120)

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.fault
def test_kill_9_during_download_leaves_no_partial_file_and_repro_completes(project, tmp_path):
    mirror = Path(os.environ["MNIST_MIRROR"])
    handler = lambda *a, **k: _Stalling(*a, directory=str(mirror), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "MNIST_MIRROR": f"http://127.0.0.1:{server.server_address[1]}/"}
        raw = project / "data" / "raw"
        with _started([str(BIN / "dvc"), "repro"], project, env, tmp_path / "dvc-stderr.log") as job:
            deadline = time.monotonic() + 300
            while not temp_leftovers(raw) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert temp_leftovers(raw), "the download never started"
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
    finally:
        _Stalling.release.set()
        server.shutdown()
        server.server_close()
    assert [p.name for p in raw.iterdir() if not p.name.startswith(".")] == []  # only the temp file is there

    _repro_is_clean(project)  # from the folder mirror again
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    )
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["download"]["outs"][0]["nfiles"] == 4

    # a temp file a later kill -9 leaves inside an output folder is not part of that output
    (raw / ".train-images-idx3-ubyte.k9x2.tmp").write_bytes(b"half a file")
    assert json.loads(run([str(BIN / "dvc"), "status", "--json"], project).stdout) == {}
