"""The model the pipeline logs to MLflow, served by `mlflow models serve`, answers like `predict`."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mnist_mlp.serving.predict import image_pixels
from ops.processes import ManagedProcess, free_port, url_answers
from support.cli import run
from support.digit_images import write_styled_digits
from support.paths import BIN

pytestmark = pytest.mark.slow  # a pipeline run, then a server start: about a minute here


def post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_served_model_answers_like_predict(project: Path, tmp_path: Path):
    run([str(BIN / "dvc"), "repro", "-q"], project)
    # logged as a torch.export program: serving never unpickles code
    artifacts = project.parent / "store"  # beside the store's SQLite file
    assert list(artifacts.glob("mlartifacts/**/data/model.pt2")) and not list(
        artifacts.glob("mlartifacts/**/model.pth")
    )

    images = list(write_styled_digits(tmp_path / "digits"))[::5]  # ten: every digit, every style
    local = run([str(BIN / "mnist-mlp"), "predict", "--json", "--top-k", "10", *map(str, images)], project)
    expected = np.zeros((len(images), 10))
    for row, entry in enumerate(json.loads(local.stdout)["predictions"]):
        for item in entry["top_k"]:
            expected[row, item["label"]] = item["probability"]

    port = free_port()
    # `make serve` runs this: the model of reports/metrics.json's run, from the fixture's store
    server = ManagedProcess(
        [BIN / "mnist-mlp", "serve", "--port", str(port)], log=tmp_path / "serve.log", cwd=project
    ).start()
    try:
        server.wait_until(lambda: url_answers(f"http://127.0.0.1:{port}/ping"), timeout=180)
        pixels = np.stack([image_pixels(path) for path in images])
        served = np.array(post(port, {"inputs": pixels.tolist()})["predictions"])
        assert served.shape == (len(images), 10)
        np.testing.assert_allclose(served, expected, atol=1e-5)
        assert served.argmax(axis=1).tolist() == expected.argmax(axis=1).tolist()
        one = np.array(post(port, {"inputs": pixels[:1].tolist()})["predictions"])  # batch size is free
        np.testing.assert_allclose(one, expected[:1], atol=1e-5)
        for bad in (float("nan"), float("inf"), 1e30, -0.5):  # refused by the model itself, not answered
            row = pixels[:1].copy()
            row[0, 300] = bad
            with pytest.raises(urllib.error.HTTPError) as refused:
                post(port, {"inputs": row.tolist()})
            assert refused.value.code == 400
            assert "pixels must be finite numbers in [0, 1]" in json.loads(refused.value.read())["stack_trace"]
        # the server's bounds (rest.SERVER_BOUNDS): with 32 connections open, the next request gets 503 at once
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
        try:
            with pytest.raises(urllib.error.HTTPError) as busy:
                post(port, {"inputs": pixels[:1].tolist()})
            assert busy.value.code == 503
        finally:
            for connection in held:
                connection.close()
        time.sleep(1)
        np.testing.assert_allclose(
            np.array(post(port, {"inputs": pixels[:1].tolist()})["predictions"]), expected[:1], atol=1e-5
        )
    finally:
        server.stop()
    assert not server.running
