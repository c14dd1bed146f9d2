"""What the model registry and the promotion gate see of an evaluated run.

The evaluate stage logs the test metrics of reports/metrics.json as flat MLflow metrics
(`test_accuracy`, `test_recall_3`); `mnist-mlp promote` turns a run's metrics back into
metrics.json's shape, so the gate's rules (metrics_rules.yaml: `test.accuracy`,
`test.per_class.*.recall`) judge a registered version exactly as they judge the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mnist_mlp.errors import UserError

CHAMPION = "champion"  # the alias `mnist-mlp promote` moves and `models:/<name>@champion` loads
PER_CLASS = ("precision", "recall", "f1")
_PER_CLASS_METRIC = re.compile(rf"^test_({'|'.join(PER_CLASS)})_(\d+)$")


def logged_metrics(test: dict) -> dict[str, float]:
    """metrics.json's `test` section as MLflow metric names: test_<name>, and test_<metric>_<class> per class."""
    flat = {f"test_{key}": float(value) for key, value in test.items() if key != "per_class"}
    flat |= {f"test_{metric}_{label}": float(value) for label, row in test["per_class"].items() for metric, value in row.items()}
    return flat


def metrics_tree(logged: dict[str, float]) -> dict:
    """The inverse of `logged_metrics`: {"test": {"accuracy": ..., "per_class": {"3": {"recall": ...}}}}; others dropped."""
    test: dict = {}
    for name, value in logged.items():
        per_class = _PER_CLASS_METRIC.match(name)
        if per_class:
            test.setdefault("per_class", {}).setdefault(per_class[2], {})[per_class[1]] = value
        elif name.startswith("test_"):
            test[name.removeprefix("test_")] = value
    return {"test": test} if test else {}


def evaluated_run_id(metrics_path: str | Path, otherwise: str) -> str:
    """The MLflow run id the evaluate stage wrote into reports/metrics.json; `otherwise` names the option to pass instead."""
    path = Path(metrics_path)
    try:
        run_id = json.loads(path.read_text())["mlflow_run_id"]
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro` first, or pass {otherwise}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: no mlflow_run_id; expected the evaluate stage's metrics.json") from None
    return str(run_id)
