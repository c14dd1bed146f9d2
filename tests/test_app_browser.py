"""`mnist-mlp app` in headless Chromium: strokes drawn with pointer events, every model's answer read back.

Run with `make test-browser` (pytest -m browser); needs chromium and chromium-driver (`make browser-deps`).
The current model is a small font-trained checkpoint; the sweep (three models) is in a SQLite store that
the app reads through an `mlflow server`, as with MLFLOW_TRACKING_URI=http://...

With APP_URL set (e.g. `make app` running, APP_URL=http://127.0.0.1:8000), test_screenshot draws a 7
on that app and saves reports/figures/app.png, the screenshot docs/app.md shows.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from mnist_mlp.files import write_bytes
from ops.processes import ManagedProcess, free_port, url_answers
from support.app import log_sweep, save_model
from support.digit_images import write_styled_digits
from support.paths import BIN, ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SETTINGS = [("relu", 0.0), ("tanh", 0.0), ("relu", 0.5)]


@pytest.fixture
def app_url(tmp_path: Path, mlflow_store: str, request) -> tuple[str, list[str]]:
    """`mnist-mlp app` on a free port: a font model as the current model, a sweep read through a tracking server."""
    names = log_sweep(tmp_path, "browser", SETTINGS)
    server = request.getfixturevalue("mlflow_server")  # after the runs: it serves MLFLOW_TRACKING_URI's store
    model = save_model(tmp_path / "model.pt")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [BIN / "mnist-mlp", "app", "--model", model, "--port", str(port)]
    with ManagedProcess(command, log=tmp_path / "app.log", env={**os.environ, "MLFLOW_TRACKING_URI": server}) as app:
        app.wait_until(lambda: url_answers(f"{url}api/models"), timeout=180)
        yield url, names


def stroke(driver, kind: str, points: list[tuple[float, float]]) -> None:
    """One stroke on the pad with a mouse, pen or touch pointer; points are offsets from the pad's center."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    kinds = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN, "touch": interaction.POINTER_TOUCH}
    actions = ActionBuilder(driver, mouse=PointerInput(kinds[kind], kind))
    x, y = points[0]
    actions.pointer_action.move_to(pad, round(x), round(y)).pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to(pad, round(x), round(y))
    actions.pointer_action.pointer_up()
    actions.perform()


def labels(driver) -> dict[str, str | None]:
    """Each card's model name -> its digit (None before an answer), in page order."""
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('[data-model]')].map(card => [card.dataset.model, card.dataset.label ?? null])"
    )
    return dict(pairs)


def wait_for(driver, condition, what: str, timeout: float = 60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        status = driver.find_element("id", "status").text
        raise AssertionError(f"never {what}; labels {labels(driver)}, status {status!r}") from None


def vertical_line() -> list[tuple[float, float]]:
    return [(0, y) for y in range(-100, 101, 20)]


def tall_loop() -> list[tuple[float, float]]:
    return [(60 * math.sin(2 * math.pi * i / 32), -100 * math.cos(2 * math.pi * i / 32)) for i in range(33)]


def test_drawn_strokes_and_uploaded_digits_are_read_by_every_model(app_url, browser, tmp_path):
    url, names = app_url
    browser.get(url)
    grid = ["browser-relu-do0", "browser-relu-do0.5", "browser-tanh-do0"]  # numbers ascending, words as run
    assert sorted(names) == grid
    wait_for(browser, lambda d: list(labels(d)) == ["current", *grid], "listed the current model and the sweep")
    assert "sweep browser" in browser.find_element("id", "lineup").text

    for kind, points, digit in (
        ("mouse", vertical_line(), "1"),
        ("pen", tall_loop(), "0"),
        ("touch", vertical_line(), "1"),
    ):
        browser.find_element("id", "clear").click()
        assert set(labels(browser).values()) == {None}
        stroke(browser, kind, points)
        wait_for(
            browser,
            lambda d, digit=digit: set(labels(d).values()) == {digit},
            f"read the {kind} stroke as {digit} in every model",
        )
        # the 28x28 image the models saw is shown: light pixels on black
        lit = browser.execute_script(
            "const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 128; return n;"
        )
        assert 20 < lit < 400, lit
    write_bytes(tmp_path / "app.png", browser.get_screenshot_as_png())

    browser.find_element("id", "clear").click()
    assert browser.find_element("id", "status").text == "Draw a digit on the pad."

    # the other way in: uploaded files (one setup for both: a tracking server and the app take a minute to start)
    upload = browser.find_element("id", "upload")
    files = list(write_styled_digits(tmp_path / "digits").items())  # every digit in each of 5 styles, style by style
    for path, digit in (files[10 * (digit % 5) + digit] for digit in range(10)):  # every digit, every style
        upload.send_keys(str(path))
        wait_for(browser, lambda d, digit=digit: labels(d)["current"] == str(digit), f"read {path.name} as {digit}")
        assert all(label is not None for label in labels(browser).values())

    notes = tmp_path / "notes.txt"
    notes.write_text("not a digit")
    upload.send_keys(str(notes))
    wait_for(
        browser,
        lambda d: "notes.txt: not a PNG or JPEG image" in d.find_element("id", "status").text,
        "explained the text file",
    )
    assert set(labels(browser).values()) == {None}


@pytest.mark.skipif(not os.environ.get("APP_URL"), reason="APP_URL names a running `mnist-mlp app` to screenshot")
def test_screenshot(browser):
    """A sloppy 7 on the app at APP_URL; the page with every model's answer -> reports/figures/app.png."""
    browser.get(os.environ["APP_URL"])
    wait_for(browser, lambda d: len(labels(d)) >= 1, "listed the models")
    # short bar, slanting stem: the sweep of docs/app.md splits between 7 and 1 on it
    stroke(browser, "mouse", [(-15, -90), (10, -91), (35, -92), (19, -40), (3, 20), (-12, 100)])
    wait_for(browser, lambda d: labels(d)["current"] is not None, "answered")
    time.sleep(1)  # the last debounced answer
    write_bytes(ROOT / "reports" / "figures" / "app.png", browser.get_screenshot_as_png())
