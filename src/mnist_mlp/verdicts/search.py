"""reports/search.md for a TPE search: its trials ranked on validation (MLflow's values, not the storage's), the
validation-best trial with its test accuracy beside it, and Optuna's parameter importances."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mnist_mlp.errors import UserError
from mnist_mlp.files import write_text
from mnist_mlp.sweeps.definition import Definition, describe
from mnist_mlp.sweeps.study import trials_table
from mnist_mlp.verdicts import stats

SEARCH_REPORT = "search.md"  # reports/search.md


class SearchReportError(UserError, LookupError):
    """A search with nothing to report yet."""


def importance_evaluator():
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def _interval(accuracy: float, digits: float | None):
    """Wilson's 95 % interval of one run's accuracy on `digits` digits; None when their count is unknown."""
    if not digits or not math.isfinite(digits):  # unknown
        return None
    return stats.accuracy_interval(round(accuracy * digits), int(digits))


def _wilson(accuracy: float, digits: float | None) -> str:
    interval = _interval(accuracy, digits)
    return f"{accuracy:.4f} {interval}" if interval else f"{accuracy:.4f}"


def verified_values(done, runs):
    """The completed trials whose value is their MLflow run's best_val_accuracy (MLflow's value kept), and
    {trial: why} for the others: a study storage is shared and untrusted, MLflow's metrics decide."""
    kept, unverified = [], {}
    for trial, row in done.iterrows():
        run_id = row["mlflow_run_id"]
        found = runs.loc[run_id] if run_id in runs.index else None
        logged = found.get("metrics.best_val_accuracy") if found is not None else None
        if found is None or found.get("status") != "FINISHED":
            unverified[trial] = f"no FINISHED MLflow run {run_id} of this study"
        elif logged is None or not math.isfinite(logged):
            unverified[trial] = f"MLflow run {run_id} holds no finite best_val_accuracy"
        elif not math.isclose(row["best_val_accuracy"], logged, rel_tol=0, abs_tol=1e-9):
            unverified[trial] = f"the storage says {row['best_val_accuracy']:.4f}, its MLflow run {run_id} {logged:.4f}"
        else:
            kept.append(trial)
    return done.loc[kept], unverified


def _with_values(study: optuna.Study, done) -> optuna.Study:
    """An in-memory copy of the study holding only the trials in `done`, with their values: what importances read."""
    copy = optuna.create_study(direction="maximize")
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number in done.index:
            copy.add_trial(
                optuna.trial.create_trial(
                    params=trial.params,
                    distributions=trial.distributions,
                    value=float(done.loc[trial.number, "best_val_accuracy"]),
                )
            )
    return copy


def verified_trials(study: optuna.Study, definition: Definition):
    """(the completed trials whose value MLflow confirms, best validation first; {trial: why} for the others; the
    study's MLflow runs by id)."""
    import pandas as pd

    from mnist_mlp.tracking import queries, store

    name = study.study_name
    table = trials_table(study)
    done = table[table["state"] == "COMPLETE"]
    if done.empty:
        raise SearchReportError(f"study {name}: no trial has completed yet")
    runs = queries.search_runs(definition.experiment, f"tags.sweep_id = {store.literal(name, 'study')}")
    by_id = runs.set_index("run_id") if not runs.empty else pd.DataFrame()
    done, unverified = verified_values(done, by_id)
    if done.empty:
        raise SearchReportError(
            f"study {name}: no completed trial has a finished MLflow run with its value: "
            + "; ".join(f"trial {trial}: {why}" for trial, why in unverified.items())
        )
    return done.sort_values("best_val_accuracy", ascending=False, kind="stable"), unverified, by_id


def _logged(by_id, run_id: str, column: str) -> float | None:
    """A run's logged value (a metric, or a param read as a number); None where the run or the value is missing."""
    import pandas as pd

    if run_id not in by_id.index:
        return None
    value = pd.to_numeric(by_id.loc[run_id].get(column), errors="coerce")
    return None if value is None or pd.isna(value) else float(value)


def _headline(done, unverified: dict, by_id, definition: Definition) -> str:
    """The validation-best trial, its test accuracy beside it, and how many others validation cannot separate."""
    from mnist_mlp.tracking import predictions

    best = done.iloc[0]
    best_test = _logged(by_id, best["mlflow_run_id"], "metrics.test_accuracy")
    logged = predictions.logged(best["mlflow_run_id"]) if best_test is not None else None
    test_text = _wilson(best_test, len(logged.actual) if logged else None) if best_test is not None else "not logged"

    def val_digits(row) -> float | None:  # the validation digits the run was scored on
        return _logged(by_id, row["mlflow_run_id"], "params.preprocess.val_size")

    best_interval = _interval(best["best_val_accuracy"], val_digits(best))
    overlapping = [
        trial
        for trial, row in done.iloc[1:].iterrows()
        if best_interval is not None
        and (_interval(row["best_val_accuracy"], val_digits(row)) or best_interval).high >= best_interval.low
    ]
    space_keys = list(definition.space["space"])
    left_out = f" ({len(unverified)} more left out: see the report)" if unverified else ""
    return (
        f"Chosen on validation: trial {best.name} ({best['experiment']}: {describe({k: best[k] for k in space_keys})}), "
        f"best validation accuracy {_wilson(best['best_val_accuracy'], val_digits(best))}; "
        f"its test accuracy {test_text} (reported once, not used to choose). "
        f"{len(done)} of {definition.size} trials completed{left_out}; {len(overlapping)} other(s) have a validation "
        "interval overlapping the chosen one's, so validation does not separate them from it."
    )


def _markdown(name: str, definition: Definition, headline: str, done, by_id, importances: dict, unverified: dict):
    import pandas as pd

    space_keys = list(definition.space["space"])
    ranked = done[["experiment", *space_keys, "best_val_accuracy", "train_seconds"]].copy()
    ranked["test_accuracy"] = pd.to_numeric(
        [_logged(by_id, run_id, "metrics.test_accuracy") for run_id in done["mlflow_run_id"]]
    )
    importance_rows = pd.DataFrame(
        {"param": list(importances), "importance": [round(v, 3) for v in importances.values()]}
    )
    lines = [
        f"# Study `{name}`: TPE search over {', '.join(space_keys)}",
        "",
        "Generated by `mnist-mlp compare --study " + name + "` from the Optuna study and its MLflow runs. "
        "Trials are ranked on best **validation** accuracy (the study's objective); test accuracy is shown beside "
        "it and chooses nothing. Intervals: Wilson's 95 % on the digits of one run.",
        "",
        headline,
        "",
        "## Parameter importances",
        "",
        "Optuna's `get_param_importances` (fANOVA, seed 0) on the completed trials' validation accuracies: the share "
        f"of its variance each param explains. A random forest on {len(done)} points, with no interval: a hint of "
        "where to search next, not a finding.",
        "",
        importance_rows.to_markdown(index=False) if importances else "(fewer than two completed trials)",
        "",
        "## Trials, ranked on validation",
        "",
        ranked.to_markdown(floatfmt=".4g"),
        "",
    ]
    if unverified:
        lines += [
            "## Trials left out",
            "",
            "Completed in the study storage, but their value is not their MLflow run's "
            "(the storage is a shared, untrusted database; MLflow's metrics rank):",
            "",
            *[f"- trial {trial}: {why}" for trial, why in unverified.items()],
            "",
        ]
    return "\n".join(lines)


def search_report(study: optuna.Study, definition: Definition, reports: Path) -> str:
    """reports/search.md for a TPE search: the trials ranked on validation, the validation-best trial with
    its test accuracy beside it (reported, never choosing), and Optuna's parameter importances; the headline
    returned. A grid study is reported by `compare` as a sweep."""
    done, unverified, by_id = verified_trials(study, definition)
    # Optuna's fANOVA over the completed trials' validation accuracies (two or more); its forest seeded, so the
    # report and a reader's own call agree
    importances = (
        optuna.importance.get_param_importances(_with_values(study, done), evaluator=importance_evaluator())
        if len(done) >= 2
        else {}
    )
    headline = _headline(done, unverified, by_id, definition)
    reports.mkdir(parents=True, exist_ok=True)
    text = _markdown(study.study_name, definition, headline, done, by_id, importances, unverified)
    write_text(reports / SEARCH_REPORT, text)
    described = ", ".join(f"{key} {value:.2f}" for key, value in importances.items())
    return "\n".join(
        [
            headline,
            f"importances (Optuna, fANOVA on validation): {described or 'n/a'}",
            f"wrote {reports / SEARCH_REPORT}",
        ]
    )
