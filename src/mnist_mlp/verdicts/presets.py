"""`mnist-mlp compare --presets`: the default and every preset side by side (reports/presets.md), each finished run
counted under the preset whose every param it logged, ranked on validation, with 95 % intervals as in compare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mnist_mlp.files import write_text
from mnist_mlp.params import PER_RUN_KEYS, Params, apply_preset, flatten, preset_paths
from mnist_mlp.tracking import location, queries
from mnist_mlp.verdicts import compare

PRESETS_REPORT = "presets.md"  # reports/presets.md


def preset_settings(root: Path) -> dict[str, dict[str, str]]:
    """name -> every param a run of it logs (as MLflow holds them, strings), but PER_RUN_KEYS: `default`
    (the schema's defaults, which params.yaml ships) and each preset params/<name>.yaml laid over them."""
    base = Params()
    resolved = {"default": base} | {name: apply_preset(base, path) for name, path in preset_paths(root).items()}
    return {
        name: {key: str(value) for key, value in flatten(params).items() if key not in PER_RUN_KEYS}
        for name, params in resolved.items()
    }


def presets_table(experiment: str, root: Path) -> pd.DataFrame:
    """One row per preset with finished runs, ranked on mean best validation accuracy: each run counted
    under the preset whose every param it logged, the newest run per seed (a rerun of a seed is not a new
    sample); 95 % intervals as in compare."""
    found = queries.search_runs(experiment, "attributes.status = 'FINISHED'")
    if found.empty or "metrics.test_accuracy" not in found:
        raise compare.CompareError(
            f"no finished run with a test accuracy in experiment '{experiment}' yet; run `dvc repro` first"
        )
    found = found[found["metrics.test_accuracy"].notna()].sort_values("start_time", ascending=False)
    rows = []
    for name, settings in preset_settings(root).items():
        columns = [f"params.{key}" for key in settings]
        if not set(columns) <= set(found.columns):
            continue  # no run logged every key of it (runs from before a key existed)
        matching = (found[columns] == pd.Series(settings).set_axis(columns)).all(axis=1)
        matched = found[matching].drop_duplicates("params.train.seed")  # newest first: the newest run of each seed
        if matched.empty:
            continue
        runs = pd.DataFrame(
            {
                "run_id": matched["run_id"],
                "seed": pd.to_numeric(matched["params.train.seed"]),
                **{metric: matched[f"metrics.{metric}"] for metric in (*compare.SPLITS.values(), "train_seconds")},
                "params.preprocess.val_size": matched["params.preprocess.val_size"],
            }
        )
        logged, _ = compare.read_predictions(runs)
        runs = compare.with_digits(runs, logged)
        rows.append(
            {
                "preset": name,
                "runs": len(runs),
                "seeds": ", ".join(sorted(matched["params.train.seed"], key=int)),
                **{f"{compare.LABELS[split]} [95 %]": compare.estimate(runs, split) for split in compare.SPLITS},
                "seconds": round(runs["train_seconds"].mean(), 1),
            }
        )
    if not rows:
        raise compare.CompareError(
            f"no finished run of experiment '{experiment}' has the params of default or a preset "
            f"({', '.join(preset_paths(root))})"
        )
    table = pd.DataFrame(rows)
    order = [value.mean for value in table[f"{compare.LABELS['val']} [95 %]"]]
    return table.iloc[np.argsort(order, kind="stable")[::-1]].reset_index(drop=True)  # validation ranks


def write_report(table: pd.DataFrame, experiment: str, reports: Path) -> Path:
    """reports/presets.md: the table, and how runs were matched to presets."""
    path = reports / PRESETS_REPORT
    write_text(
        path,
        "\n\n".join(
            [
                f"# Presets side by side: experiment `{experiment}`",
                f"Finished runs in the MLflow store `{location.tracking_uri()}`, each under the preset whose every param it "
                f"logged ({', '.join(sorted(PER_RUN_KEYS))} may differ); the newest run per seed. Ranked on mean best "
                "validation accuracy (the test digits never rank); 95 % intervals: t over seeds, Wilson's for one run.",
                compare.markdown_table(table),
            ]
        )
        + "\n",
    )
    return path
