"""The MLflow UI in headless Chromium, against a store holding a small real sweep.

Run alone with `make test-browser` (pytest -m browser). Needs the Debian packages
chromium and chromium-driver (`make browser-deps`). Saves mlflow_runs.png, mlflow_run.png,
mlflow_sweep_view.png and mlflow_sweep_charts.png in the test's temp folder, or in $SCREENSHOTS
(`SCREENSHOTS=$PWD/reports/figures make test-browser` refreshes the ones the docs show): a test run
leaves the checkout as it found it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import mlflow
import pytest

from mnist_mlp.files import write_bytes
from mnist_mlp.tracking.ui_view import sweep_view_url
from support.browser import call, wait_for_texts
from support.stores import new_experiment
from support.sweep import run_sweep

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_ui_shows_every_run_of_a_real_sweep(project: Path, mlflow_server: str, browser, tmp_path: Path):
    figures = Path(os.environ.get("SCREENSHOTS") or tmp_path)
    output = run_sweep(project, ["relu", "tanh"], ["0.0", "0.5"], "--set", "train.epochs=1", "--sweep-id", "ui-check")
    names = [f"ui-check-{index}" for index in range(4)]  # <study>-<trial>, trials numbered from 0
    assert all(name in output for name in names), output

    # every run over the REST API, with the sweep's params and the metrics
    experiment = call(mlflow_server, "experiments/get-by-name?experiment_name=mnist-mlp")["experiment"]
    found = call(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})
    runs = {
        next(tag["value"] for tag in run["data"]["tags"] if tag["key"] == "dvc_exp_name"): run for run in found["runs"]
    }
    assert sorted(runs) == sorted(names)
    settings = set()
    for _name, run in runs.items():
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        settings.add((params["train.activation"], float(params["train.dropout"])))
        assert tags["sweep_id"] == "ui-check" and tags["torch_threads"] == "1"
        assert {"best_val_accuracy", "val_accuracy", "test_accuracy", "train_seconds"} <= set(metrics)
        assert Path(run["info"]["artifact_uri"].removeprefix("file://")).is_dir()
    assert settings == {("relu", 0.0), ("relu", 0.5), ("tanh", 0.0), ("tanh", 0.5)}

    # the experiment's runs table in the UI lists them by name (<study>-<trial>, their DVC experiments)
    browser.get(f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs")
    wait_for_texts(browser, [runs[name]["info"]["run_name"] for name in names])
    write_bytes(figures / "mlflow_runs.png", browser.get_screenshot_as_png())

    # docs/sweeps.md's search-only link: only this sweep's runs, best validation accuracy first
    run_names = {
        run["info"]["run_name"]: {m["key"]: m["value"] for m in run["data"]["metrics"]}["best_val_accuracy"]
        for run in runs.values()
    }
    browser.get(
        f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning"
        "&searchFilter=tags.sweep_id%20%3D%20"
        "%27ui-check%27&orderByKey=metrics.%60best_val_accuracy%60&orderByAsc=false"
    )
    wait_for_texts(browser, list(run_names))
    body = browser.execute_script("return document.body.textContent")
    shown = sorted(run_names, key=body.index)
    assert [run_names[name] for name in shown] == sorted(run_names.values(), reverse=True), shown

    # one run's page shows its params and metrics
    first = runs[names[0]]
    browser.get(f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs/{first['info']['run_id']}")
    wait_for_texts(browser, [first["info"]["run_name"], "activation", "test_accuracy"])
    write_bytes(figures / "mlflow_run.png", browser.get_screenshot_as_png())


# the runs table's header cells that a user sees: inside the table, and on top where they are drawn
# (not scrolled out of it, nor under the MLflow Assistant panel)
VISIBLE_HEADERS = """
return [...document.querySelectorAll('.ag-header-cell')].filter(cell => {
  const box = cell.getBoundingClientRect(), table = cell.closest('.ag-root-wrapper').getBoundingClientRect();
  const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
  return box.width > 0 && box.left >= table.left && box.right <= table.right && cell.contains(top);
}).map(cell => cell.textContent.trim());
"""
CHARTS_DRAWN = """
return document.querySelectorAll('.scatterlayer .point').length >= 8
  && document.querySelectorAll('svg .dimension').length >= 3 && !document.querySelector('[class*="-spin-spinning"]');
"""
GENAI_NAVIGATION = ["Evaluation runs", "Prompts", "Sessions", "Judges"]  # the sidebar in GenAI mode only


def test_the_sweep_link_opens_its_runs_with_the_setting_and_accuracies_as_columns(
    mlflow_store: str, mlflow_server: str, browser, tmp_path: Path
):
    """`sweep_view_url`'s address, opened as it is: no click. Runs made by hand (a real sweep is the test above's):
    mlflow_store comes first in the arguments, so the server starts on its store."""
    from selenium.webdriver.support.ui import WebDriverWait

    figures = Path(os.environ.get("SCREENSHOTS") or tmp_path)
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    accuracies = {}
    for trial, (activation, dropout, seed) in enumerate(itertools.product(["relu", "tanh"], ["0.0", "0.5"], "01")):
        name = f"ui-view-{trial}"
        started = client.create_run(experiment_id, run_name=name, tags={"sweep_id": "ui-view"})
        setting = {"train.activation": activation, "train.dropout": dropout, "train.seed": seed, "train.lr": "0.01"}
        for key, value in setting.items():
            client.log_param(started.info.run_id, key, value)
        accuracies[name] = round(0.90 + 0.01 * ((trial * 5) % 8), 2)  # every value once, not in trial order
        client.log_metric(started.info.run_id, "best_val_accuracy", accuracies[name])
        client.log_metric(started.info.run_id, "test_accuracy", round(accuracies[name] - 0.005, 3))
        client.set_terminated(started.info.run_id)
    other = client.create_run(experiment_id, run_name="other-sweep-0", tags={"sweep_id": "other"})
    client.set_terminated(other.info.run_id)

    browser.get(sweep_view_url("mnist-mlp", "ui-view", mlflow_server))
    wait_for_texts(browser, list(accuracies))
    headers = ["train.activation", "train.dropout", "train.seed", "best_val_accuracy", "test_accuracy"]
    try:
        WebDriverWait(browser, 60, poll_frequency=1).until(
            lambda driver: set(headers) <= set(driver.execute_script(VISIBLE_HEADERS))
        )
    finally:
        write_bytes(figures / "mlflow_sweep_view.png", browser.get_screenshot_as_png())
    body = browser.execute_script("return document.body.textContent")
    shown = sorted(accuracies, key=body.index)
    assert shown == sorted(accuracies, key=accuracies.get, reverse=True), shown  # best validation accuracy first
    assert "other-sweep-0" not in body and "train.lr" not in browser.execute_script(VISIBLE_HEADERS)
    # the classic model-training view, not GenAI's (traces, evaluations, prompts) that MLflow 3.17 opens by default
    navigation = browser.find_element("tag name", "nav").text
    assert "Model registry" in navigation and not [item for item in GENAI_NAVIGATION if item in navigation]
    assert "Training runs" not in body  # GenAI's name for the runs page

    # the same view's chart view: the sweep's two charts first
    browser.get(sweep_view_url("mnist-mlp", "ui-view", mlflow_server, charts=True))
    wait_for_texts(browser, ["Parallel Coordinates", "train.dropout vs. best_val_accuracy", *accuracies])
    drawn = []  # a point per run in the scatter (plotly), the parallel plot's three axes (d3), no spinner: twice
    try:
        WebDriverWait(browser, 60, poll_frequency=1).until(
            lambda driver: drawn.append(driver.execute_script(CHARTS_DRAWN)) or drawn[-2:] == [True, True]
        )
    finally:
        write_bytes(figures / "mlflow_sweep_charts.png", browser.get_screenshot_as_png())
