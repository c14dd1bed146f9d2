"""A link that opens one sweep in the MLflow UI: its runs, best validation accuracy first, the setting and
both accuracies as columns, and the chart view ready on dropout x best validation accuracy.

The MLflow 3.17 UI keeps only the search and the order in its address; columns and charts live in the
browser, or in a saved view: an experiment tag `mlflow.sharedViewState.<key>` that the runs page loads for
`?viewStateShareKey=<key>` (and lists under **Views** by its name). This writes that tag as the UI's own
"Save view" does, and returns the address.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse

from mlflow.exceptions import MlflowException

from mnist_mlp.errors import UserError, redact
from mnist_mlp.tracking.location import tracking_uri
from mnist_mlp.tracking.queries import NoRunsError
from mnist_mlp.tracking.store import client, failure_line, literal

SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
PARAMS = ("train.activation", "train.dropout", "train.seed")
METRICS = ("best_val_accuracy", "test_accuracy")
CHARTS_SECTION = "sweep-charts"
LOCAL_UI = "http://127.0.0.1:5000"  # `make ui`


class ViewError(UserError, RuntimeError):
    """The store refused the view's tag (a tracking server where this user may only read)."""


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it: params.`train.dropout`, metrics.`test_accuracy`."""
    return f"{kind}.`{key}`"


def share_key(sweep_id: str) -> str:
    """One key per sweep, so a second call updates its view; a digest, since a tag key allows few characters."""
    return "sweep-" + hashlib.sha256(sweep_id.encode()).hexdigest()[:16]


def _chart(uuid: str, kind: str, **config) -> dict:
    base = {"uuid": uuid, "type": kind, "metricSectionId": CHARTS_SECTION, "deleted": False, "isGenerated": False}
    return base | config


def _section(uuid: str, name: str) -> dict:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": False, "deleted": False}


def view_state(sweep_id: str) -> dict:
    """What the runs page reads from a saved view: its search facets and its UI state, in one object."""
    return {
        # the UI moves these three into the address once it loads the view
        "searchFilter": f"tags.sweep_id = {literal(sweep_id, 'sweep id')}",
        "orderByKey": column("metrics", "best_val_accuracy"),
        "orderByAsc": False,
        "selectedColumns": [column("params", key) for key in PARAMS] + [column("metrics", key) for key in METRICS],
        # charts draw visible runs only, by default the first 10 (`make sweep` has 27)
        "runsHiddenMode": "SHOW_ALL",
        # without both lists the chart view makes its own (parallel axes of its choosing); reordered, it keeps
        # this order: the sweep's two charts first, then the one-per-metric charts it adds to "Model metrics"
        "isAccordionReordered": True,
        "compareRunSections": [_section(CHARTS_SECTION, "Sweep"), _section("model-metrics", "Model metrics")],
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


def sweep_view_url(experiment_name: str, sweep_id: str, base_url: str | None = None, *, charts: bool = False) -> str:
    """Save the sweep's view on its experiment; return the address that opens it: the runs table, or with
    `charts` the chart view. `base_url`: the UI, by default the tracking server's (it serves one) or `make ui`'s.
    A sweep id MLflow's filter cannot hold is refused (store.FilterValueError) before anything is written."""
    state = view_state(sweep_id)
    uri = redact(tracking_uri())
    base_url = base_url or (uri if uri.startswith(("http://", "https://")) else LOCAL_UI)
    key, now = share_key(sweep_id), int(time.time() * 1000)
    # the envelope "Save view" writes; its state may be "deflate;<base64>" too, plain JSON is read as it is
    saved = {"name": f"sweep {sweep_id}", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    try:
        store = client()
        experiment = store.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise NoRunsError(f"no experiment '{experiment_name}' in {uri}; `make sweep` makes one")
        store.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(saved))
        # the 3.17.2 UI reads this only with its GenAI / model-training switch off (a build flag, on there)
        store.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
    except MlflowException as exc:
        raise ViewError(f"cannot save the sweep's view in {uri} ({failure_line(exc)})") from None
    # workflowType: that switch, GenAI unless this browser chose otherwise; and no search facet
    # (searchFilter, orderByKey...) in the address, or the UI skips the saved view
    query = {"viewStateShareKey": key, "workflowType": "machine_learning"}
    path = f"/experiments/{urllib.parse.quote(experiment.experiment_id)}/runs"
    table = f"{base_url.rstrip('/')}/#{path}?{urllib.parse.urlencode(query)}"
    return chart_view(table) if charts else table


def chart_view(table_url: str) -> str:
    """The same saved view opened on its charts instead of its runs table."""
    return f"{table_url}&{urllib.parse.urlencode({'compareRunsMode': 'CHART'})}"
