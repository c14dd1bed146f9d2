"""Compare the runs of a sweep, read from MLflow (the source of truth): a markdown report and a figure.

One row per setting (activation x dropout): best validation accuracy, test accuracy and training
seconds, as mean ± std when several runs (seeds) share it. The report names the settings every run
shared and warns when runs differ in more than the grid axes: such a table mixes settings. The
figure is a heatmap of test accuracy beside each setting's validation-accuracy curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mnist_mlp.tracking import location, queries, store
from mnist_mlp.errors import UserError
from mnist_mlp.files import save_figure, write_text
from mnist_mlp.params import PER_RUN_KEYS, Params, apply_preset, flatten, preset_paths

LATEST, ALL = "latest", "all"
SETTING = ["activation", "dropout"]
AXES = [*SETTING, "seed"]  # what a grid varies; the sweep id differs between sweeps by design
VALUES = {"best val accuracy": "best_val_accuracy", "test accuracy": "test_accuracy", "seconds": "train_seconds"}
FORMATS = {"dropout": "g", "seed": "g", "best_val_accuracy": ".4f", "test_accuracy": ".4f", "train_seconds": ".1f"}
HEADERS = {**{field: label for label, field in VALUES.items()}, "name": "run (DVC experiment)", "run_id": "MLflow run"}


class CompareError(UserError, LookupError):
    """Nothing to compare: no run of the sweep finished."""


@dataclass
class Comparison:
    sweep_id: str  # a sweep id, or "all"
    runs: pd.DataFrame  # one row per finished run: run_id, name, the axes, the values, params.*
    left_out: pd.DataFrame  # runs without a test accuracy (failed, killed, still running)
    summary: pd.DataFrame  # one row per setting
    shared: dict[str, str]  # param -> the value every run logged
    mixed: dict[str, list[str]]  # param other than the axes -> the values the runs differ in
    curves: dict[tuple[str, float], list[tuple[int, float]]]  # setting -> [(epoch, mean val accuracy)]


def _mean_std(values: pd.Series, spec: str) -> str:
    values = values.dropna()
    if len(values) < 2:
        return "".join(format(value, spec) for value in values)
    return f"{values.mean():{spec}} ± {values.std():{spec}}"


def compare(experiment: str, sweep_id: str = LATEST) -> Comparison:
    """Read a sweep's runs (`latest`: the newest finished one's; `all`: every run) and their histories."""
    if sweep_id != ALL:
        sweep_id, _ = queries.sweep_models(experiment, sweep_id)
    found = queries.search_runs(experiment, "" if sweep_id == ALL else f"tags.sweep_id = {store.literal(sweep_id, 'sweep id')}")
    column = lambda name: found[name] if name in found else pd.Series(float("nan"), found.index)  # noqa: E731
    runs = pd.DataFrame({"run_id": found["run_id"], "name": column("tags.mlflow.runName"), "status": found["status"],
                         "activation": column("params.activation"), "dropout": pd.to_numeric(column("params.dropout")),
                         "seed": pd.to_numeric(column("params.seed")),
                         **{field: column(f"metrics.{field}") for field in VALUES.values()},
                         **found.filter(regex=r"^params\.")})  # fmt: skip
    finished = (runs["status"] == "FINISHED") & runs["test_accuracy"].notna() & runs["activation"].notna()
    kept, left_out = runs[finished], runs[~finished]
    if kept.empty:
        raise CompareError(f"none of the {len(runs)} run(s) of sweep '{sweep_id}' finished with a test accuracy")
    params = kept.filter(regex=r"^params\.").rename(columns=lambda name: name.removeprefix("params.")).dropna(axis=1, how="all")
    distinct = params.nunique(dropna=False)
    shared = {key: params[key].iloc[0] for key in sorted(distinct.index[distinct == 1])}
    mixed = {key: sorted(params[key].fillna("(none)").unique()) for key in sorted(distinct.index[distinct > 1])
             if key not in (*AXES, "tracking.sweep_id")}  # fmt: skip
    grouped = kept.groupby(SETTING, sort=True)
    summary = grouped.agg(runs=("run_id", "size"), test_accuracy_mean=("test_accuracy", "mean"),
                          best_val_accuracy_mean=("best_val_accuracy", "mean"))  # fmt: skip
    for label, field in VALUES.items():
        summary[label] = grouped[field].apply(_mean_std, FORMATS[field])
    client, curves = store.client(), {}
    for setting, group in grouped:
        history = pd.DataFrame([(point.step, point.value) for run_id in group["run_id"]
                                for point in client.get_metric_history(run_id, "val_accuracy")], columns=["epoch", "value"])  # fmt: skip
        curves[setting] = list(history.groupby("epoch")["value"].mean().items())
    return Comparison(sweep_id, kept, left_out, summary.reset_index(), shared, mixed, curves)


def notes(result: Comparison) -> list[str]:
    """What the report and stdout both say: the shared settings, a warning on mixed ones, the plots command."""
    lines = [f"Settings all {len(result.runs)} runs shared: " + ", ".join(f"{key}={value}" for key, value in result.shared.items())]
    if result.mixed:
        differing = "; ".join(f"{key} ({', '.join(values)})" for key, values in result.mixed.items())
        lines.append(f"WARNING: these runs differ in more than {', '.join(AXES)}: {differing}; the comparison mixes settings")
    names = " ".join(dict.fromkeys(sorted(result.runs["name"].dropna())))
    return [*lines, f"Training curves of these runs (DVC experiments of the same names): dvc plots diff {names} --open"]


def _table(frame: pd.DataFrame, left: int = 1) -> str:
    """A markdown table, numbers in FORMATS (blank when missing), the first `left` columns left-aligned."""
    cells = frame.apply(lambda column: column.map(lambda value: "" if pd.isna(value) else format(value, FORMATS.get(column.name, ""))))
    return cells.rename(columns=HEADERS).to_markdown(index=False, disable_numparse=True,
                                                     colalign=["left"] * left + ["right"] * (frame.shape[1] - left))  # fmt: skip


def chosen(result: Comparison) -> pd.Series:
    """The setting with the highest mean best-validation accuracy (ties: the first in activation, dropout order).

    Validation chooses, never the test digits: a test set used to choose is no longer a test set.
    """
    ranked = result.summary.sort_values(["best_val_accuracy_mean", *SETTING], ascending=[False, *[True] * len(SETTING)], kind="stable")
    return ranked.iloc[0]


def chosen_line(result: Comparison) -> str:
    best = chosen(result)
    line = (f"Chosen on validation (the test digits never choose): {best['activation']}, dropout {best['dropout']:g}, "
            f"mean best validation accuracy {best['best_val_accuracy_mean']:.4f} over {best['runs']} run(s); "
            f"its test accuracy, reported beside it: {best['test_accuracy_mean']:.4f}.")  # fmt: skip
    if (result.summary["runs"] == 1).all():
        line += " Each setting has one run (one seed, one sample), so this ranking cannot tell settings apart."
    return line


def markdown(result: Comparison) -> str:
    title = "all runs" if result.sweep_id == ALL else f"sweep `{result.sweep_id}`"
    pivot = result.summary.pivot(index="activation", columns="dropout", values="test accuracy")
    parts = [
        f"# Activation x dropout: {title}",
        f"{len(result.runs)} finished run(s) from the MLflow store `{location.tracking_uri()}`; "
        "a cell with several runs (seeds) shows mean ± std.",
        *notes(result),
        "![test accuracy and validation curves](figures/compare.png)",
        _table(result.summary[["activation", "dropout", "runs", *VALUES]]),
        "Test accuracy, activation x dropout:",
        _table(pivot.rename(columns=lambda dropout: f"dropout {dropout:g}").reset_index()),
        chosen_line(result),
        _table(result.runs.sort_values(AXES)[["name", *AXES, *VALUES.values(), "run_id"]], left=2),
    ]
    if len(result.left_out):
        parts.append(f"Left out ({len(result.left_out)}, no test accuracy): "
                     + ", ".join(f"`{run['name']}` ({run['status']})" for _, run in result.left_out.iterrows()))  # fmt: skip
    return "\n\n".join(parts) + "\n"


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
    low, high = np.nanmin(values), np.nanmax(values)
    if high - low < 1e-4:  # all equal: a colour scale of zero width would mislabel its ticks
        low, high = low - 0.005, high + 0.005
    image = heat.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high)
    heat.set(xticks=range(len(pivot.columns)), xticklabels=[f"{d:g}" for d in pivot.columns], xlabel="dropout",
             yticks=range(len(pivot.index)), yticklabels=list(pivot.index), ylabel="activation", title="test accuracy")  # fmt: skip
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            heat.text(j, i, f"{value:.4f}", ha="center", va="center", color="black" if value > (low + high) / 2 else "white")
    fig.colorbar(image, ax=heat, fraction=0.046, pad=0.04)
    for (activation, dropout), curve in result.curves.items():
        epochs, accuracy = zip(*curve) if curve else ((), ())
        lines.plot(epochs, accuracy, marker="o" if len(epochs) < 6 else None, label=f"{activation}, dropout {dropout:g}")
    lines.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per epoch")
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


def preset_settings(root: Path) -> dict[str, dict[str, str]]:
    """name -> every param a run of it logs (as MLflow holds them, strings), but PER_RUN_KEYS: `default`
    (the schema's defaults, which params.yaml ships) and each preset params/<name>.yaml laid over them."""
    base = Params()
    resolved = {"default": base} | {name: apply_preset(base, path) for name, path in preset_paths(root).items()}
    return {name: {key: str(value) for key, value in flatten(params).items() if key not in PER_RUN_KEYS}
            for name, params in resolved.items()}  # fmt: skip


def compare_presets(experiment: str, root: Path) -> pd.DataFrame:
    """One row per preset with finished runs: each run counted under the preset whose every param it
    logged, the newest run per seed (a rerun of a seed is not a new sample); mean ± std over seeds."""
    found = queries.search_runs(experiment, "attributes.status = 'FINISHED'")
    if found.empty or "metrics.test_accuracy" not in found:
        raise CompareError(f"no finished run with a test accuracy in experiment '{experiment}' yet; run `dvc repro` first")
    found = found[found["metrics.test_accuracy"].notna()].sort_values("start_time", ascending=False)
    rows = []
    for name, settings in preset_settings(root).items():
        columns = [f"params.{key}" for key in settings]
        if not set(columns) <= set(found.columns):
            continue  # no run logged every key of it (runs from before a key existed)
        matching = (found[columns] == pd.Series(settings).set_axis(columns)).all(axis=1)
        runs = found[matching].drop_duplicates("params.seed")  # newest first: the newest run of each seed
        if runs.empty:
            continue
        rows.append({"preset": name, "runs": len(runs), "seeds": ", ".join(sorted(runs["params.seed"], key=int)),
                     **{label: _mean_std(runs[f"metrics.{field}"], FORMATS[field]) for label, field in VALUES.items()}})  # fmt: skip
    if not rows:
        raise CompareError(f"no finished run of experiment '{experiment}' has the params of default or a preset "
                           f"({', '.join(preset_paths(root))})")
    return pd.DataFrame(rows)


def write_presets_report(table: pd.DataFrame, experiment: str, reports: Path) -> Path:
    """reports/presets.md: the table, and how runs were matched to presets."""
    path = reports / "presets.md"
    write_text(path, "\n\n".join([
        f"# Presets side by side: experiment `{experiment}`",
        f"Finished runs in the MLflow store `{location.tracking_uri()}`, each under the preset whose every param it "
        f"logged ({', '.join(sorted(PER_RUN_KEYS))} may differ); the newest run per seed; several seeds: mean ± std.",
        _table(table),
    ]) + "\n")
    return path
