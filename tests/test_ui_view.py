"""tracking/ui_view.py: the saved view a sweep's MLflow UI link opens (on a real SQLite store; the page
itself in headless Chromium is tests/test_browser.py's)."""

from __future__ import annotations

import json
import urllib.parse

import mlflow
import pytest

from mnist_mlp.tracking import ui_view
from mnist_mlp.tracking.queries import NoRunsError
from mnist_mlp.tracking.store import FilterValueError
from support.stores import new_experiment


@pytest.fixture
def client(mlflow_store) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(mlflow_store)


def saved_views(client, experiment_id: str) -> dict[str, dict]:
    tags = client.get_experiment(experiment_id).tags
    return {
        key.removeprefix(ui_view.SHARED_VIEW_PREFIX): json.loads(value)
        for key, value in tags.items()
        if key.startswith(ui_view.SHARED_VIEW_PREFIX)
    }


def run(client, experiment_id: str, sweep_id: str, accuracy: float) -> str:
    started = client.create_run(experiment_id, tags={"sweep_id": sweep_id})
    client.log_param(started.info.run_id, "train.dropout", "0.2")
    client.log_metric(started.info.run_id, "best_val_accuracy", accuracy)
    return started.info.run_id


def test_the_link_opens_the_sweeps_saved_view_in_the_model_training_ui(client):
    experiment_id = new_experiment(client, "unit")
    url = ui_view.sweep_view_url("unit", "act-x-drop", "http://127.0.0.1:5050/")

    address, _, fragment = url.partition("#")
    path, _, query = fragment.partition("?")
    assert (address, path) == ("http://127.0.0.1:5050/", f"/experiments/{experiment_id}/runs")
    key = ui_view.share_key("act-x-drop")
    # no searchFilter/orderByKey there: the UI skips a saved view when the address has a search facet
    assert urllib.parse.parse_qs(query) == {"viewStateShareKey": [key], "workflowType": ["machine_learning"]}

    (saved,) = saved_views(client, experiment_id).items()
    assert saved[0] == key and saved[1]["name"] == "sweep act-x-drop"
    assert saved[1]["createdAt"] == saved[1]["updatedAt"] > 0
    state = json.loads(saved[1]["state"])
    assert state["selectedColumns"] == [
        "params.`train.activation`",
        "params.`train.dropout`",
        "params.`train.seed`",
        "metrics.`best_val_accuracy`",
        "metrics.`test_accuracy`",
    ]
    assert (state["searchFilter"], state["orderByKey"], state["orderByAsc"]) == (
        "tags.sweep_id = 'act-x-drop'",
        "metrics.`best_val_accuracy`",
        False,
    )
    parallel, scatter = state["compareRunCharts"]
    assert (parallel["type"], parallel["selectedParams"], parallel["selectedMetrics"]) == (
        "PARALLEL",
        ["train.activation", "train.dropout"],
        ["best_val_accuracy"],
    )
    assert (scatter["xaxis"], scatter["yaxis"]) == (
        {"key": "train.dropout", "type": "PARAM"},
        {"key": "best_val_accuracy", "type": "METRIC"},
    )
    sections = {section["uuid"] for section in state["compareRunSections"]}
    assert {chart["metricSectionId"] for chart in state["compareRunCharts"]} <= sections
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_views_search_and_order_are_what_mlflow_runs(client):
    """The UI sends the view's filter and order as they are to runs/search: MLflow's own parser must take them."""
    experiment_id = new_experiment(client, "unit")
    worse, better = run(client, experiment_id, "s1", 0.8), run(client, experiment_id, "s1", 0.9)
    run(client, experiment_id, "s2", 0.99)
    ui_view.sweep_view_url("unit", "s1")
    state = json.loads(saved_views(client, experiment_id)[ui_view.share_key("s1")]["state"])
    found = client.search_runs([experiment_id], state["searchFilter"], order_by=[f"{state['orderByKey']} DESC"])
    assert [found_run.info.run_id for found_run in found] == [better, worse]


def test_a_sweep_has_one_view_and_the_chart_link_opens_it_on_the_charts(client):
    experiment_id = new_experiment(client, "unit")
    table = ui_view.sweep_view_url("unit", "s1")
    charts = ui_view.sweep_view_url("unit", "s1", charts=True)
    ui_view.sweep_view_url("unit", "s2")
    assert table.startswith(f"{ui_view.LOCAL_UI}/#/experiments/{experiment_id}/runs?")
    assert charts == f"{table}&compareRunsMode=CHART"
    assert sorted(saved_views(client, experiment_id)) == sorted([ui_view.share_key("s1"), ui_view.share_key("s2")])


@pytest.mark.parametrize("sweep_id", ["x' or tags.sweep_id != '", "back\\slash"])
def test_an_id_the_filter_cannot_hold_is_refused_before_anything_is_written(client, sweep_id):
    experiment_id = new_experiment(client, "unit")
    with pytest.raises(FilterValueError, match="sweep id"):
        ui_view.sweep_view_url("unit", sweep_id)
    assert saved_views(client, experiment_id) == {}


def test_an_unknown_experiment_says_so(client):
    with pytest.raises(NoRunsError, match="no experiment 'missing'"):
        ui_view.sweep_view_url("missing", "s1")
