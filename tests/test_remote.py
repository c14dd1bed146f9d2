"""DVC remotes: what one clone pushes (data, models/model.pt), a fresh clone pulls, up to date and ready to predict.

A folder remote (fast), and an s3:// remote against moto's S3 server on 127.0.0.1, as dvc-s3's own
tests run it (slow: the same pipeline once more).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from support.cli import cli_in_process, run
from support.digit_images import picture, save_picture
from support.paths import BIN

DVC = str(BIN / "dvc")
PULLED = ("data/raw", "data/processed", "models/model.pt")

pytestmark = pytest.mark.integration  # dvc push/pull, git clone: subprocesses in throwaway projects


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server in a thread on 127.0.0.1, a free port; the URL DVC's `endpointurl` takes."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(tmp_path: Path, monkeypatch) -> None:
    """Fake keys in the environment (boto's first source), no ~/.aws files read: DVC subprocesses inherit them."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(key, str(tmp_path / "no-aws-file"))
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)


def dvc(repo: Path, *args: str) -> str:
    return run([DVC, *args], repo).stdout


def md5(path: Path) -> str:
    """Of a file, or of a folder's files with their relative names."""
    digest = hashlib.md5()
    for item in sorted(p for p in [path, *path.rglob("*")] if p.is_file()):
        digest.update(str(item.relative_to(path) if item != path else "").encode() + item.read_bytes())
    return digest.hexdigest()


def build_and_push(project: Path, empty_mlflow_db: Path, *remote_config: list[str]) -> dict[str, str]:
    """Configure the default remote (committed), `dvc repro`, commit, `dvc push`; the md5 of each pulled path."""
    shutil.copy(
        empty_mlflow_db, os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    )  # a new store's migration takes 10+ s
    for command in remote_config:
        dvc(project, *command)
    dvc(project, "repro")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "pipeline outputs tracked by DVC, remote configured"], project)
    dvc(project, "push")
    return {name: md5(project / name) for name in PULLED}


def fresh_clone(project: Path, into: Path) -> Path:
    run(["git", "clone", "-q", str(project), str(into)], into.parent)
    assert not (into / ".dvc" / "cache").exists() and not (into / "models" / "model.pt").exists()
    return into


def assert_restored(clone: Path, pushed: dict[str, str]) -> None:
    """Same bytes as pushed, nothing to reproduce."""
    assert {name: md5(clone / name) for name in PULLED} == pushed
    assert json.loads(dvc(clone, "status", "--json")) == {}


def predictions(repo: Path, image: Path, capsys, monkeypatch) -> dict:
    monkeypatch.chdir(repo)
    code, out, err = cli_in_process(["predict", "--json", str(image)], capsys)
    assert code == 0, err
    return json.loads(out)


def test_a_fresh_clone_pulls_data_and_model_from_a_folder_remote_and_predicts_without_training(
    project: Path, empty_mlflow_db: Path, tmp_path: Path, capsys, monkeypatch
):
    remote = tmp_path / "dvc-remote"
    pushed = build_and_push(project, empty_mlflow_db, ["remote", "add", "-d", "shared", str(remote)])
    assert (remote / "files" / "md5").is_dir()

    clone = fresh_clone(project, tmp_path / "clone")
    assert "dvc-remote" in (clone / ".dvc" / "config").read_text()  # the remote came with git
    dvc(clone, "pull")
    assert_restored(clone, pushed)

    image = save_picture(picture(3, "black-on-white"), tmp_path / "three.png")
    assert predictions(clone, image, capsys, monkeypatch) == predictions(project, image, capsys, monkeypatch)


def test_pull_reports_what_the_remote_lacks(project: Path, tmp_path: Path):
    """A clone whose remote holds nothing fails naming the missing outputs, instead of training or half-restoring."""
    dvc(project, "remote", "add", "-d", "shared", str(tmp_path / "empty-remote"))
    dvc(project, "repro", "download")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "raw data tracked, never pushed"], project)
    clone = fresh_clone(project, tmp_path / "clone")
    result = run([DVC, "pull"], clone, check=False)
    assert result.returncode != 0
    assert "data/raw" in result.stdout + result.stderr
    assert not (clone / "data" / "raw").exists()


@pytest.mark.slow
def test_a_fresh_clone_pulls_from_an_s3_remote(
    project: Path, empty_mlflow_db: Path, tmp_path: Path, s3_endpoint: str, s3_credentials, capsys, monkeypatch
):
    import boto3

    bucket = f"mnist-mlp-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    pushed = build_and_push(
        project,
        empty_mlflow_db,
        ["remote", "add", "-d", "shared", f"s3://{bucket}/dvc"],
        ["remote", "modify", "shared", "endpointurl", s3_endpoint],
    )
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(key.startswith("dvc/files/md5/") for key in keys)

    clone = fresh_clone(project, tmp_path / "clone")
    dvc(clone, "pull")
    assert_restored(clone, pushed)

    image = save_picture(picture(7, "black-on-white"), tmp_path / "seven.png")
    assert predictions(clone, image, capsys, monkeypatch) == predictions(project, image, capsys, monkeypatch)
