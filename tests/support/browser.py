"""Headless Chromium and a local `mlflow server` for the browser tests (the fixtures `browser` and
`mlflow_server` are in conftest.py; they need `make browser-deps`)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.processes import ManagedProcess, free_port, url_answers
from support.paths import BIN

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def call(base: str, endpoint: str, body: dict | None = None) -> dict:
    """MLflow's REST API at `base`: GET without a body, POST with one."""
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a free 127.0.0.1 port, against MLFLOW_TRACKING_URI; yields its URL, stopped after."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        BIN / "mlflow",
        "server",
        "--backend-store-uri",
        os.environ["MLFLOW_TRACKING_URI"],
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with ManagedProcess(command, log=folder / "mlflow-server.log", name="mlflow server") as server:
        server.wait_until(lambda: url_answers(f"{base}/health", body=b"OK"), timeout=180)
        yield base


def browser(folder: Path) -> Iterator:
    """A headless Chromium WebDriver, its profile in `folder`; quit after."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make browser-deps` (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1800,1000",
        f"--user-data-dir={folder / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_texts(driver, texts: list[str], timeout: float = 120) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        # textContent: a long run name is cut by CSS (text-overflow), not in the page itself
        body = d.execute_script("return document.body.textContent")
        return all(text in body for text in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(shown)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        missing = [text for text in texts if text not in body]
        raise AssertionError(
            f"the page at {driver.current_url} never showed {missing}; it shows:\n{body[:3000]}"
        ) from None
