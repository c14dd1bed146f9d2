"""The MLflow UI in headless Chromium, against a store holding a small real sweep.

Run alone with `make test-browser` (pytest -m browser). Needs the Debian packages
chromium and chromium-driver (`make browser-deps`). Saves reports/figures/mlflow_runs.png
and mlflow_run.png, the screenshots the README shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from mnist_mlp.files import write_bytes
from sweep_support import run_sweep

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FIGURES = ROOT / "reports" / "figures"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(base: str, endpoint: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """`mlflow server` on a free 127.0.0.1 port, against MLFLOW_TRACKING_URI; stopped after."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"mlflow server exited:\n{(tmp_path / 'mlflow-server.log').read_text()}"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.read().strip() == b"OK":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 180 s"
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers only
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def browser(tmp_path: Path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make browser-deps` (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1800,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)  # fmt: skip
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_texts(driver, texts: list[str], timeout: float = 120) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        # textContent: a long run name is cut by CSS (text-overflow), not in the page itself
        body = d.execute_script("return document.body.textContent")
        return all(text in body for text in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(shown)
    except Exception:
        body = driver.find_element("tag name", "body").text
        missing = [text for text in texts if text not in body]
        raise AssertionError(f"the page at {driver.current_url} never showed {missing}; it shows:\n{body[:3000]}") from None


def test_the_ui_shows_every_run_of_a_real_sweep(project: Path, mlflow_server: str, browser):
    output = run_sweep(project, ["relu", "tanh"], ["0.0", "0.5"], "--set", "train.epochs=1", "--sweep-id", "ui-check")
    names = [f"ui-check-{index}" for index in range(1, 5)]  # DVC names a grid's experiments <name>-1..N
    assert all(name in output for name in names), output

    # every run over the REST API, with the sweep's params and the metrics
    experiment = call(mlflow_server, "experiments/get-by-name?experiment_name=mnist-mlp")["experiment"]
    found = call(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})
    runs = {run["info"]["run_name"]: run for run in found["runs"]}
    assert sorted(runs) == sorted(names)
    settings = set()
    for name, run in runs.items():
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        settings.add((params["activation"], float(params["dropout"])))
        assert tags["sweep_id"] == "ui-check" and tags["torch_threads"] == "1"
        assert {"best_val_accuracy", "val_accuracy", "test_accuracy", "train_seconds"} <= set(metrics)
        assert Path(run["info"]["artifact_uri"].removeprefix("file://")).is_dir()
    assert settings == {("relu", 0.0), ("relu", 0.5), ("tanh", 0.0), ("tanh", 0.5)}

    # the experiment's runs table in the UI lists them by name
    browser.get(f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs")
    wait_for_texts(browser, names)
    write_bytes(FIGURES / "mlflow_runs.png", browser.get_screenshot_as_png())

    # one run's page shows its params and metrics
    first = runs[names[0]]
    browser.get(f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs/{first['info']['run_id']}")
    wait_for_texts(browser, [names[0], "activation", "test_accuracy"])
    write_bytes(FIGURES / "mlflow_run.png", browser.get_screenshot_as_png())
