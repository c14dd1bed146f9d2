"""Compare runs read from MLflow (the source of truth): a markdown table and a figure.

One row per setting (activation x dropout): best validation accuracy, test accuracy, epochs
and training seconds, as mean ± std when several runs (seeds) share a setting. The figure
is a heatmap of test accuracy beside the validation-accuracy curve of each setting, read
from the per-epoch metric history. Any grid works; missing cells stay empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mnist_mlp import tracking
from mnist_mlp.errors import UserError
from mnist_mlp.files import save_figure, write_text

LATEST = "latest"
ALL = "all"
SETTING = ["activation", "dropout"]
VALUES = {  # report column -> run field
    "best val accuracy": "best_val_accuracy",
    "test accuracy": "test_accuracy",
    "epochs": "epochs",
    "seconds": "train_seconds",
}
FORMATS = {"best_val_accuracy": ".4f", "test_accuracy": ".4f", "epochs": "g", "train_seconds": ".1f"}


class CompareError(UserError, LookupError):
    """Nothing to compare: no such experiment, sweep or finished run."""


@dataclass
class Comparison:
    sweep_id: str  # a sweep id, or "all"
    runs: "pd.DataFrame"  # noqa: F821 - one row per finished run
    left_out: "pd.DataFrame"  # noqa: F821 - runs without test metrics (failed, killed, still running)
    summary: "pd.DataFrame"  # noqa: F821 - one row per setting
    curves: dict[tuple[str, float], list[tuple[int, float]]]  # setting -> [(epoch, mean val accuracy)]


def _number(value: Optional[str]) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_runs(experiment: str):
    """Every run of `experiment` as a DataFrame, newest first."""
    import pandas as pd

    client = tracking.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise CompareError(
            f"no MLflow experiment '{experiment}' in {tracking.tracking_uri()}; run `make repro` or `make sweep` first"
        )
    rows, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token, order_by=["attributes.start_time DESC"])
        for run in page:
            params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
            rows.append({
                "run_id": run.info.run_id,
                "name": run.info.run_name or "",
                "status": run.info.status,
                "start_time": run.info.start_time,
                "sweep_id": tags.get("sweep_id", ""),
                "activation": params.get("activation", ""),
                "dropout": _number(params.get("dropout")),
                "seed": _number(params.get("seed")),
                "epochs": _number(params.get("epochs")),
                "best_val_accuracy": metrics.get("best_val_accuracy", math.nan),
                "test_accuracy": metrics.get("test_accuracy", math.nan),
                "train_seconds": metrics.get("train_seconds", math.nan),
            })  # fmt: skip
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows, columns=["run_id", "name", "status", "start_time", "sweep_id", "activation", "dropout",
                                       "seed", "epochs", "best_val_accuracy", "test_accuracy", "train_seconds"])


def select_sweep(runs, sweep_id: str = LATEST):
    """(sweep id, its runs): `latest` = the sweep of the newest run that has one, `all` = every run."""
    if sweep_id == ALL:
        return ALL, runs
    swept = runs[runs["sweep_id"] != ""]
    if sweep_id == LATEST:
        if swept.empty:
            raise CompareError(
                f"no run in {tracking.tracking_uri()} has a sweep_id tag; run `make sweep`, or pass --all to compare every run"
            )
        sweep_id = swept.sort_values("start_time", ascending=False)["sweep_id"].iloc[0]
    chosen = runs[runs["sweep_id"] == sweep_id]
    if chosen.empty:
        known = ", ".join(sorted(swept["sweep_id"].unique(), reverse=True)[:5]) or "none"
        raise CompareError(f"no run with sweep_id '{sweep_id}' in {tracking.tracking_uri()}; latest sweeps: {known}")
    return sweep_id, chosen


def _mean_std(values, spec: str) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return format(values.iloc[0], spec)
    return f"{values.mean():{spec}} ± {values.std(ddof=1):{spec}}"


def summarize(runs):
    """One row per setting: run count, and mean (and std) of each reported value."""
    grouped = runs.groupby(SETTING, sort=True)
    summary = grouped.agg(runs=("run_id", "size"), **{
        f"{field}_{stat}": (field, stat) for field in VALUES.values() for stat in ("mean", "std")
    })  # fmt: skip
    for column, field in VALUES.items():
        summary[column] = grouped[field].apply(_mean_std, FORMATS[field])
    return summary.reset_index()


def compare(experiment: str = "mnist-mlp", sweep_id: str = LATEST) -> Comparison:
    """Read the runs and their histories from MLflow; nothing is written."""
    sweep_id, runs = select_sweep(load_runs(experiment), sweep_id)
    finished = (runs["status"] == "FINISHED") & runs["test_accuracy"].notna() & (runs["activation"] != "")
    kept, left_out = runs[finished], runs[~finished]
    if kept.empty:
        raise CompareError(
            f"none of the {len(runs)} run(s) of sweep '{sweep_id}' finished with a test accuracy; see the MLflow UI (make ui)"
        )
    client = tracking.client()
    curves = {}
    for setting, group in kept.groupby(SETTING, sort=True):
        per_epoch: dict[int, list[float]] = {}
        for run_id in group["run_id"]:
            for point in client.get_metric_history(run_id, "val_accuracy"):
                per_epoch.setdefault(point.step, []).append(point.value)
        curves[setting] = [(epoch, sum(values) / len(values)) for epoch, values in sorted(per_epoch.items())]
    return Comparison(sweep_id, kept, left_out, summarize(kept), curves)


def markdown(result: Comparison) -> str:
    summary = result.summary
    title = "all runs" if result.sweep_id == ALL else f"sweep `{result.sweep_id}`"
    lines = [
        f"# Activation x dropout: {title}",
        "",
        f"{len(result.runs)} finished run(s) from the MLflow store `{tracking.tracking_uri()}`; "
        "a cell with several runs (seeds) shows mean ± std.",
        "",
        "![test accuracy and validation curves](figures/compare.png)",
        "",
        "| activation | dropout | runs | " + " | ".join(VALUES) + " |",
        "|---|---:|---:|" + "---:|" * len(VALUES),
    ]
    for _, row in summary.iterrows():
        cells = [row["activation"], f"{row['dropout']:g}", str(row["runs"]), *(row[column] for column in VALUES)]
        lines.append("| " + " | ".join(cells) + " |")

    pivot = summary.pivot(index="activation", columns="dropout", values="test accuracy")
    lines += ["", "Test accuracy, activation x dropout:", "",
              "| activation | " + " | ".join(f"dropout {d:g}" for d in pivot.columns) + " |",
              "|---|" + "---:|" * len(pivot.columns)]  # fmt: skip
    for activation, row in pivot.iterrows():
        lines.append(f"| {activation} | " + " | ".join(cell if isinstance(cell, str) else "" for cell in row) + " |")

    best = result.runs.sort_values("test_accuracy", ascending=False).iloc[0]
    lines += ["", f"Best run: `{best['name']}` ({best['activation']}, dropout {best['dropout']:g}), "
              f"test accuracy {best['test_accuracy']:.4f}, MLflow run `{best['run_id']}`.", "",
              "| run (DVC experiment) | activation | dropout | seed | best val accuracy | test accuracy | seconds | MLflow run |",
              "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for _, run in result.runs.sort_values(["activation", "dropout", "seed"]).iterrows():
        seed = "" if math.isnan(run["seed"]) else f"{run['seed']:g}"
        lines.append(f"| {run['name']} | {run['activation']} | {run['dropout']:g} | {seed} | {run['best_val_accuracy']:.4f} "
                     f"| {run['test_accuracy']:.4f} | {run['train_seconds']:.1f} | {run['run_id']} |")
    if not result.left_out.empty:
        lines += ["", f"Left out ({len(result.left_out)}, no test accuracy): "
                  + ", ".join(f"`{r['name']}` ({r['status']})" for _, r in result.left_out.iterrows())]
    names = " ".join(sorted(result.runs["name"]))
    lines += ["", "Training curves of these runs together (DVC experiments of the same names):", "",
              f"    dvc plots diff {names} --open", ""]  # fmt: skip
    return "\n".join(lines)


def figure(result: Comparison):
    """Left: heatmap of test accuracy (activation x dropout); right: validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pivot = result.summary.pivot(index="activation", columns="dropout", values="test_accuracy_mean")
    fig, (heat, lines) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    values = pivot.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = finite.min(), finite.max()
    if high - low < 1e-4:  # all equal: a colour scale of zero width would mislabel its ticks
        low, high = low - 0.005, high + 0.005
    image = heat.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high)
    heat.set_xticks(range(len(pivot.columns)), [f"{d:g}" for d in pivot.columns])
    heat.set_yticks(range(len(pivot.index)), list(pivot.index))
    heat.set_xlabel("dropout")
    heat.set_ylabel("activation")
    heat.set_title("test accuracy")
    middle = (low + high) / 2
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            heat.text(j, i, f"{value:.4f}", ha="center", va="center", color="black" if value > middle else "white")
    fig.colorbar(image, ax=heat, fraction=0.046, pad=0.04)

    for (activation, dropout), curve in result.curves.items():
        if curve:
            epochs, accuracy = zip(*curve)
            lines.plot(epochs, accuracy, marker="o" if len(epochs) < 6 else None, label=f"{activation}, dropout {dropout:g}")
    lines.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines.set_xlabel("epoch")
    lines.set_ylabel("validation accuracy")
    lines.set_title("validation accuracy per epoch")
    lines.grid(alpha=0.3)
    lines.legend(fontsize="small", loc="lower right")
    title = "all runs" if result.sweep_id == ALL else f"sweep {result.sweep_id}"
    fig.suptitle(f"Activation x dropout, {title} ({len(result.runs)} runs)")
    fig.tight_layout()
    return fig


def write_report(result: Comparison, reports: Path) -> tuple[Path, Path]:
    """reports/compare.md and reports/figures/compare.png, each written atomically."""
    from matplotlib import pyplot as plt

    table, picture = reports / "compare.md", reports / "figures" / "compare.png"
    fig = figure(result)
    try:
        save_figure(picture, fig)
    finally:
        plt.close(fig)
    write_text(table, markdown(result))
    return table, picture
