"""A link that opens one sweep in the MLflow UI: its runs, best validation accuracy first, with the
setting and both accuracies as columns, and the chart view ready on dropout x best validation accuracy.

The MLflow 3.17 UI keeps only the search and the order in its address; the columns and charts live in
the browser, or in a saved view: an experiment tag `mlflow.sharedViewState.<key>` that the runs page
loads for `?viewStateShareKey=<key>` (and lists under **Views** by its name). This writes that tag, as
the UI's own "Save view" does, and returns the address.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse

from mnist_mlp.tracking.location import tracking_uri
from mnist_mlp.tracking.queries import NoRunsError
from mnist_mlp.tracking.store import client, literal

SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
PARAMS = ("train.activation", "train.dropout", "train.seed")
METRICS = ("best_val_accuracy", "test_accuracy")
CHARTS_SECTION = "sweep-charts"


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: `params.\\`train.dropout\\``, `metrics.\\`test_accuracy\\``."""
    return f"{kind}.`{key}`"


def share_key(sweep_id: str) -> str:
    """One key per sweep, so a second call updates its view; a digest, since a tag key allows few characters."""
    return "sweep-" + hashlib.sha256(sweep_id.encode()).hexdigest()[:16]


def _chart(uuid: str, kind: str, **config) -> dict:
    base = {"uuid": uuid, "type": kind, "metricSectionId": CHARTS_SECTION, "deleted": False, "isGenerated": False}
    return {**base, **config}


def view_state(sweep_id: str) -> dict:
    """The state the runs page reads from a saved view: search facets and UI state in one object."""
    return {
        # the UI puts these three in the address itself once the view is loaded
        "searchFilter": f"tags.sweep_id = {literal(sweep_id, 'sweep id')}",
        "orderByKey": column("metrics", "best_val_accuracy"),
        "orderByAsc": False,
        "selectedColumns": [column("params", key) for key in PARAMS] + [column("metrics", key) for key in METRICS],
        # the chart view draws visible runs only, and shows the first 10 by default: a grid has 18 or more
        "runsHiddenMode": "SHOW_ALL",
        # without both lists the chart view makes its own (a bar chart per metric, parallel axes it picks);
        # kept in this order, the sweep's charts come first and the per-metric charts follow in "Model metrics"
        "isAccordionReordered": True,
        "compareRunSections": [
            {"uuid": CHARTS_SECTION, "name": "Sweep", "display": True, "isReordered": False, "deleted": False},
            {"uuid": "model-metrics", "name": "Model metrics", "display": True, "isReordered": False, "deleted": False},
        ],
        "compareRunCharts": [
            _chart(
                "sweep-parallel",
                "PARALLEL",
                runsCountToCompare=100,
                selectedParams=["train.activation", "train.dropout"],
                selectedMetrics=["best_val_accuracy"],
                showAllRuns=True,
            ),
            _chart(
                "sweep-scatter",
                "SCATTER",
                runsCountToCompare=100,
                xaxis={"key": "train.dropout", "type": "PARAM"},
                yaxis={"key": "best_val_accuracy", "type": "METRIC"},
            ),
        ],
    }


def sweep_view_url(
    experiment_name: str, sweep_id: str, base_url: str = "http://127.0.0.1:5000", *, charts: bool = False
) -> str:
    """Save the sweep's view on the experiment and return the address that opens it: the runs table, or with
    `charts` the chart view. The sweep id is refused (FilterValueError) when MLflow's filter cannot hold it."""
    state = view_state(sweep_id)  # before any store is opened: a bad id writes nothing
    store = client()
    experiment = store.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise NoRunsError(f"no experiment '{experiment_name}' in {tracking_uri()}; `make sweep` makes one")
    key, now = share_key(sweep_id), int(time.time() * 1000)
    # the envelope the UI's "Save view" writes; its `state` may also be "deflate;<base64>", plain JSON is read as is
    saved = {"name": f"sweep {sweep_id}"[:200], "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    store.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(saved))
    # read by nothing in the 3.17 UI (its sidebar switch decides), but earlier 3.x UIs open the runs by it
    store.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
    # workflowType: the UI's GenAI / model-training switch, GenAI unless the browser chose otherwise;
    # no search facet in the address, or the UI ignores the saved view
    query = {"viewStateShareKey": key, "workflowType": "machine_learning"}
    if charts:
        query["compareRunsMode"] = "CHART"
    path = f"/experiments/{urllib.parse.quote(experiment.experiment_id)}/runs"
    return f"{base_url.rstrip('/')}/#{path}?{urllib.parse.urlencode(query)}"
