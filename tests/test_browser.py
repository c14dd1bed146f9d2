"""The MLflow UI in headless Chromium, against a store holding a small real sweep.

Run alone with `make test-browser` (pytest -m browser). Needs the Debian packages
chromium and chromium-driver (`make browser-deps`). Saves mlflow_runs.png and mlflow_run.png in the
test's temp folder, or in $SCREENSHOTS (`SCREENSHOTS=$PWD/reports/figures make test-browser` refreshes the ones
the docs show): a test run leaves the checkout as it found it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnist_mlp.files import write_bytes
from support.browser import call, wait_for_texts
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
        settings.add((params["activation"], float(params["dropout"])))
        assert tags["sweep_id"] == "ui-check" and tags["torch_threads"] == "1"
        assert {"best_val_accuracy", "val_accuracy", "test_accuracy", "train_seconds"} <= set(metrics)
        assert Path(run["info"]["artifact_uri"].removeprefix("file://")).is_dir()
    assert settings == {("relu", 0.0), ("relu", 0.5), ("tanh", 0.0), ("tanh", 0.5)}

    # the experiment's runs table in the UI lists them by name (<study>-<trial>, their DVC experiments)
    browser.get(f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs")
    wait_for_texts(browser, [runs[name]["info"]["run_name"] for name in names])
    write_bytes(figures / "mlflow_runs.png", browser.get_screenshot_as_png())

    # docs/sweeps.md's link: only this sweep's runs, best validation accuracy first
    run_names = {
        run["info"]["run_name"]: {m["key"]: m["value"] for m in run["data"]["metrics"]}["best_val_accuracy"]
        for run in runs.values()
    }
    browser.get(
        f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs?searchFilter=tags.sweep_id%20%3D%20"
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
