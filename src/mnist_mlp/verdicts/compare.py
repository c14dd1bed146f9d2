"""Compare the runs of a sweep, read from MLflow (the source of truth): a markdown report and a figure.

Validation chooses, the test digits report: the setting (activation x dropout) with the highest mean best
validation accuracy is the choice, and every other setting is tested against it on the same test digits,
paired seed by seed (each digit's share of right answers over the seeds both ran, an exact sign test,
Holm-corrected: verdicts/stats.py); the headline is the group level with the choice and the settings
worse (or better) beyond noise. Which runs count is explicit (`select_runs`): one FINISHED run with finite
metrics and a usable predictions file per setting and seed; every other run is listed with its reason. Every accuracy carries a 95 % interval:
a t-interval over seeds, or Wilson's from the digits for a single run (verdicts/stats.py). Main
effects average activation over dropout and dropout over activation. The report names the settings every
run shared and warns when runs differ in more than the grid axes: such a table mixes settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd

from mnist_mlp.errors import UserError
from mnist_mlp.files import save_figure, write_text
from mnist_mlp.params import Activation
from mnist_mlp.tracking import location, predictions, queries, store
from mnist_mlp.verdicts import stats

LATEST, ALL = "latest", "all"
SETTING = ["activation", "dropout"]
AXES = [*SETTING, "seed"]  # what a grid varies; the sweep id differs between sweeps by design
SPLITS = {"val": "best_val_accuracy", "test": "test_accuracy"}  # split -> its metric; validation chooses
LABELS = {"val": "best val accuracy", "test": "test accuracy", "seconds": "seconds"}
FORMATS = {
    "dropout": "g",
    "seed": "g",
    "best_val_accuracy": ".4f",
    "test_accuracy": ".4f",
    "train_seconds": ".1f",
    "test_interval": "",
}
HEADERS = {
    "best_val_accuracy": "best val accuracy",
    "test_accuracy": "test accuracy",
    "train_seconds": "seconds",
    "test_interval": "test 95 % (Wilson)",
    "name": "run (DVC experiment)",
    "run_id": "MLflow run",
}


class CompareError(UserError, LookupError):
    """Nothing to compare: no run of the sweep finished."""


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy and its 95 % interval: over seeds (t) when there are several, else Wilson's from the digits."""

    mean: float
    interval: stats.Interval | None  # None: one run whose digits are not known

    def __str__(self) -> str:
        return f"{self.mean:.4f}" + (f" {self.interval}" if self.interval else "")


def estimate(runs: pd.DataFrame, split: str) -> Estimate:
    """The mean of `split`'s accuracy over the runs' seeds (runs of one seed averaged first, e.g. over dropout
    for a main effect); a t-interval over the seeds when there are two or more, else Wilson's on the pooled digits."""
    per_seed = runs.groupby("seed")[SPLITS[split]].mean()
    if len(per_seed) >= 2:
        mean, interval = stats.mean_interval(per_seed.to_numpy())
        return Estimate(
            mean, stats.Interval(max(interval.low, 0.0), min(interval.high, 1.0))
        )  # an accuracy is in [0, 1]
    correct, total = runs[f"{split}_correct"], runs[f"{split}_total"]
    if correct.isna().any() or total.isna().any():
        return Estimate(float(per_seed.mean()), None)
    return Estimate(float(per_seed.mean()), stats.accuracy_interval(int(correct.sum()), int(total.sum())))


@dataclass(frozen=True)
class Verdict:
    """One setting tested against the validation choice on the test digits (choice first)."""

    setting: tuple[str, float]
    paired: stats.Paired  # the choice against this setting, over the seeds both ran
    p_holm: float  # Holm-adjusted over every setting tested against the choice

    @property
    def outcome(self) -> str:
        """This setting against the choice (the paired test has the choice first)."""
        return {"better": "worse", "worse": "better", "level": "level"}[self.paired.first_is(self.p_holm)]


@dataclass
class Comparison:
    sweep_id: str  # a sweep id, or "all"
    runs: pd.DataFrame  # one row per counted run: run_id, name, the axes, the metrics, digit counts, params.*
    left_out: pd.DataFrame  # every other run: run_id, name, status, reason (select_runs, unusable predictions)
    summary: pd.DataFrame  # one row per setting: runs, val and test Estimates, seconds
    shared: dict[str, str]  # param -> the value every run logged
    mixed: dict[str, list[str]]  # param other than the axes -> the values the runs differ in
    curves: dict[tuple[str, float], pd.DataFrame]  # setting -> epoch, mean, low, high of val accuracy over its runs
    effects: dict[str, pd.DataFrame] = field(default_factory=dict)  # axis -> one row per value, averaged over the other
    verdicts: list[Verdict] = field(default_factory=list)  # every other setting against the choice
    untested: str = ""  # why there are no paired tests, when there are none
    answers_from: str = ""  # where the per-digit answers came from: the models on a local test split, or logged files


def number_text(value) -> str:
    """A value as short as `:g` prints it, unless that loses digits: 0.2, but 0.200000001 (distinct settings, distinct names)."""
    short = f"{float(value):g}"
    return short if float(short) == float(value) else repr(float(value))


def setting_name(setting) -> str:
    activation, dropout = setting
    return f"{activation}/{number_text(dropout)}"


def read_predictions(
    runs: pd.DataFrame, test: predictions.LocalTest | None = None
) -> tuple[dict[str, predictions.Predictions], dict[str, str]]:
    """run_id -> its per-digit test answers, and run_id -> why it has none usable. With the local test split (`test`),
    each run's own model, verified file by file, answers it: a predictions file in the store is never read, since
    anyone who can log a run could have written one. Without it, the run's logged file, as untrusted input. Either
    way the answers must score the run's logged test accuracy: otherwise its metrics are not this model's."""
    from mnist_mlp.errors import UserError
    from mnist_mlp.tracking import loading

    found, problems = {}, {}
    for run in runs.itertuples():
        try:
            if test is not None:
                answers = predictions.Predictions(
                    test.labels, loading.predicted_digits(f"runs:/{run.run_id}/model", test.pixels)
                )
            else:
                answers = predictions.logged(run.run_id)
        except UserError as exc:  # a crafted or missing model, an unreadable file
            problems[run.run_id] = str(exc) if test is None else f"run {run.run_id}: its model: {exc}"
            continue
        if answers is None:
            continue
        if not np.isclose(answers.correct.mean(), run.test_accuracy, atol=1e-4):  # another model's metrics or file
            what = (
                f"its model scores {answers.correct.mean():.4f} on {test.source}"
                if test is not None
                else f"{predictions.ARTIFACT} scores {answers.correct.mean():.4f}"
            )
            problems[run.run_id] = f"run {run.run_id}: {what}, not the run's test accuracy {run.test_accuracy:.4f}"
            continue
        found[run.run_id] = answers
    return found, problems


def with_digits(runs: pd.DataFrame, logged: dict[str, predictions.Predictions]) -> pd.DataFrame:
    """The runs with how many digits each split had and how many were right (NaN where unknown), for Wilson's intervals."""
    runs = runs.copy()
    val_size = pd.to_numeric(runs.get("params.preprocess.val_size", pd.Series(np.nan, runs.index)))
    runs["val_total"] = val_size
    runs["val_correct"] = (runs["best_val_accuracy"] * val_size).round()  # accuracy = right / val_size exactly
    runs["test_total"] = [len(logged[run_id].actual) if run_id in logged else np.nan for run_id in runs["run_id"]]
    runs["test_correct"] = [
        int(logged[run_id].correct.sum()) if run_id in logged else np.nan for run_id in runs["run_id"]
    ]
    runs["test_interval"] = [
        stats.accuracy_interval(int(c), int(t)) if pd.notna(c) else None
        for c, t in zip(runs["test_correct"], runs["test_total"])
    ]
    return runs


def _paired_tests(
    runs: pd.DataFrame, logged: dict[str, predictions.Predictions], choice: tuple[str, float]
) -> tuple[list[Verdict], str]:
    """Every other setting against the choice, seed by seed: each digit's share of right answers over the seeds both
    settings ran, an exact sign test (stats.paired), Holm over the family. A setting with no seed in common with
    the choice is not tested, and said so."""
    missing = sorted(runs.loc[~runs["run_id"].isin(logged), "name"].fillna("?"))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return [], (
            f"{len(missing)} of {len(runs)} runs logged no per-digit predictions ({predictions.ARTIFACT}; "
            f"evaluate logs it with every run): {', '.join(missing[:5])}{more}"
        )
    first = next(iter(logged.values())).actual
    if any(len(found.actual) != len(first) or (found.actual != first).any() for found in logged.values()):
        return [], "the runs were tested on different digits (another test split), so no test pairs them"
    # setting -> seed -> each digit's share right over that seed's runs (several only where settings mix other params)
    by_seed = {
        setting: {
            int(seed): np.mean([logged[run_id].correct for run_id in runs_of_seed["run_id"]], axis=0)
            for seed, runs_of_seed in group.groupby("seed")
        }
        for setting, group in runs.groupby(SETTING, sort=True)
    }
    others = [setting for setting in by_seed if setting != choice]
    if not others:
        return [], "one setting, nothing to test it against"
    common = {setting: sorted(by_seed[choice].keys() & by_seed[setting].keys()) for setting in others}
    unpaired = [setting for setting in others if not common[setting]]
    tested = [setting for setting in others if common[setting]]
    tests = [
        stats.paired(
            stats.share_right(by_seed[choice], common[setting]),
            stats.share_right(by_seed[setting], common[setting]),
            tuple(common[setting]),
        )
        for setting in tested
    ]
    adjusted = stats.holm([test.p_value for test in tests])
    why = (
        f"no seed in common with {setting_name(choice)}, so no paired test: {', '.join(map(setting_name, unpaired))}"
        if unpaired
        else ""
    )
    return [Verdict(setting, test, p) for setting, test, p in zip(tested, tests, adjusted)], why


def _curves(group: pd.DataFrame) -> pd.DataFrame:
    """Validation accuracy per epoch over a setting's runs: mean and its 95 % t-interval (the mean alone for one run)."""
    client = store.client()
    history = pd.DataFrame(
        [
            (point.step, point.value)
            for run_id in group["run_id"]
            for point in client.get_metric_history(run_id, "val_accuracy")
        ],
        columns=["epoch", "value"],
    )
    rows = []
    for epoch, values in history.groupby("epoch")["value"]:
        mean, interval = stats.mean_interval(values.to_numpy())
        rows.append((epoch, mean, interval.low if interval else mean, interval.high if interval else mean))
    return pd.DataFrame(rows, columns=["epoch", "mean", "low", "high"])


def _effects(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each axis's values averaged over the other axis (per seed first), when both axes vary."""
    if any(runs[axis].nunique() < 2 for axis in SETTING):
        return {}
    return {
        axis: pd.DataFrame(
            [
                {axis: value, "runs": len(group), **{split: estimate(group, split) for split in SPLITS}}
                for value, group in runs.groupby(axis, sort=True)
            ]
        )
        for axis in SETTING
    }


def select_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the runs that count, every other run with its reason). A run counts when it FINISHED with a finite best
    validation and test accuracy; of several such runs with the same params (but tracking.*: a retried trial whose
    first worker died, a rerun), the first started counts: the same deterministic point, not another sample."""
    reasons = pd.Series("", index=runs.index, dtype=object)
    reasons[runs["status"] != "FINISHED"] = "status " + runs["status"].astype(str)
    reasons[(reasons == "") & runs["activation"].isna()] = "no activation param: not a training run of this project"
    for metric in SPLITS.values():  # MLflow hands back a NaN it holds as it hands back a metric never logged
        finite = np.isfinite(pd.to_numeric(runs[metric], errors="coerce").astype(float))
        reasons[(reasons == "") & ~finite] = f"no finite {metric} (not logged, NaN or infinite)"
    candidates = runs[reasons == ""].sort_values("start_time", kind="stable")
    point = [column for column in runs if column.startswith("params.") and not column.startswith("params.tracking.")]
    points = candidates[point].fillna("(none)").astype(str).apply(tuple, axis=1)
    for index, duplicate_of in points[points.duplicated(keep="first")].items():
        kept = candidates.loc[points[points == duplicate_of].index[0]]
        reasons[index] = (
            f"a second run of the same params ({setting_name((kept['activation'], kept['dropout']))} seed "
            f"{kept['seed']:g}): counted once, as {kept['run_id']}"
        )
    first = candidates[~points.duplicated(keep="first")]
    left_out = runs[reasons != ""].assign(reason=reasons[reasons != ""])
    return runs.loc[first.index], left_out


def compare(experiment: str, sweep_id: str = LATEST, test: predictions.LocalTest | None = None) -> Comparison:
    """Read a sweep's runs (`latest`: the newest finished one's; `all`: every run), their histories and per-digit
    answers: each run's verified model run on the local test split `test`, or without it their logged files."""
    if sweep_id != ALL:
        sweep_id, _ = queries.sweep_models(experiment, sweep_id)
    found = queries.search_runs(
        experiment, "" if sweep_id == ALL else f"tags.sweep_id = {store.literal(sweep_id, 'sweep id')}"
    )
    column = lambda name: found[name] if name in found else pd.Series(float("nan"), found.index)  # noqa: E731
    runs = pd.DataFrame(
        {
            "run_id": found["run_id"],
            "name": column("tags.dvc_exp_name").fillna(column("tags.mlflow.runName")),
            "status": found["status"],
            "start_time": column("start_time"),
            "activation": column("params.train.activation"),
            "dropout": pd.to_numeric(column("params.train.dropout")),
            "seed": pd.to_numeric(column("params.train.seed")),
            **{name: column(f"metrics.{name}") for name in (*SPLITS.values(), "train_seconds")},
            **found.filter(regex=r"^params\."),
        }
    )
    kept, left_out = select_runs(runs)
    logged, problems = read_predictions(kept, test)
    if problems:  # a run whose file is unusable is left out, named; the other runs are still paired
        unusable = kept["run_id"].isin(problems)
        left_out = pd.concat([left_out, kept[unusable].assign(reason=kept.loc[unusable, "run_id"].map(problems))])
        kept = kept[~unusable]
    if kept.empty:
        raise CompareError(
            f"none of the {len(runs)} run(s) of sweep '{sweep_id}' counts: "
            + "; ".join(f"{run.name or run.run_id}: {run.reason}" for run in left_out.itertuples())
        )
    params = (
        kept.filter(regex=r"^params\.")
        .rename(columns=lambda name: name.removeprefix("params."))
        .dropna(axis=1, how="all")
    )
    distinct = params.nunique(dropna=False)
    shared = {key: params[key].iloc[0] for key in sorted(distinct.index[distinct == 1])}
    mixed = {
        key: sorted(params[key].fillna("(none)").unique())
        for key in sorted(distinct.index[distinct > 1])
        if key not in (*(f"train.{axis}" for axis in AXES), "tracking.sweep_id", "tracking.trial")
    }
    kept = with_digits(kept, logged)
    rows, curves = [], {}
    for setting, group in kept.groupby(SETTING, sort=True):
        rows.append(
            {
                "activation": setting[0],
                "dropout": setting[1],
                "runs": len(group),
                **{split: estimate(group, split) for split in SPLITS},
                "seconds": round(group["train_seconds"].mean(), 1),
            }
        )
        curves[setting] = _curves(group)
    summary = pd.DataFrame(rows)
    summary["val_mean"] = [value.mean for value in summary["val"]]
    # validation ranks (ties: activation, dropout order); the test digits never choose
    summary = summary.sort_values(["val_mean", *SETTING], ascending=[False, True, True], kind="stable").reset_index(
        drop=True
    )
    choice = (summary.loc[0, "activation"], summary.loc[0, "dropout"])
    verdicts, untested = _paired_tests(kept, logged, choice)
    answers_from = (
        f"each run's own model, verified file by file, run on {test.source}"
        if test is not None
        else f"each run's logged {predictions.ARTIFACT} (no local test split to run the models on: checked against "
        "the run's accuracy only)"
    )
    return Comparison(
        sweep_id, kept, left_out, summary, shared, mixed, curves, _effects(kept), verdicts, untested, answers_from
    )


def chosen(result: Comparison) -> pd.Series:
    """The setting with the highest mean best-validation accuracy: the summary's first row."""
    return result.summary.iloc[0]


def _p_bound(verdicts: list[Verdict], at_least: bool) -> str:
    """`p ≥ 0.31` (the smallest of a group within noise), or `p ≤ 0.004` / `p < 0.001` (the largest of a decided one)."""
    values = [verdict.p_holm for verdict in verdicts]
    if at_least:
        return f"Holm-adjusted p ≥ {min(values):.2f}"
    return "Holm-adjusted p < 0.001" if max(values) < 0.001 else f"Holm-adjusted p ≤ {max(values):.3f}"


def _points(verdicts: list[Verdict]) -> str:  # accuracy differences over the seeds each pair shares
    points = sorted(abs(100 * verdict.paired.accuracy_difference) for verdict in verdicts)
    return (
        f"{points[0]:.2f} points"
        if len(points) == 1 or points[0] == points[-1]
        else f"{points[0]:.2f}–{points[-1]:.2f} points"
    )


OUTCOMES = {
    "worse": "worse",
    "better": "better",
    "level": "no clear difference",
}  # Verdict.outcome -> the report's words


def setting_words(setting) -> str:
    """`relu with dropout 0.2`: a setting as a sentence names it."""
    activation, dropout = setting
    return f"{activation} with dropout {number_text(dropout)}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def describe_runs(result: Comparison) -> str:
    """What the runs were, e.g. `27 runs: 3 activations × 3 dropouts, 3 seeds each, 20 epochs`."""
    summary = result.summary
    activations, dropouts = summary["activation"].unique(), summary["dropout"].unique()
    grid = [
        _count(len(activations), "activation") if len(activations) > 1 else f"activation {activations[0]}",
        _count(len(dropouts), "dropout") if len(dropouts) > 1 else f"dropout {number_text(dropouts[0])}",
    ]
    runs = sorted(summary["runs"].unique())
    seeds = f"{_count(runs[0], 'seed')} each" if len(runs) == 1 else f"{runs[0]}–{runs[-1]} seeds each"
    epochs = result.shared.get("train.epochs")
    trained = (
        _count(int(epochs), "epoch")
        if epochs is not None
        else "epochs " + ", ".join(result.mixed.get("train.epochs", ["not logged"]))
    )
    return f"{_count(len(result.runs), 'run')}: {' × '.join(grid)}, {seeds}, {trained}"


def grid_title(result: Comparison) -> str:
    """`Activation × dropout`, or the one axis that varied, or `One setting`."""
    varied = [axis for axis in SETTING if result.summary[axis].nunique() > 1]
    return " × ".join(varied).capitalize() if varied else "One setting"


def headline(result: Comparison) -> str:
    """What the comparison concludes, as sentences: what ran, the validation choice with its test accuracy beside it,
    and each other setting against it on the same test digits."""
    best = chosen(result)
    choice = setting_words((best["activation"], best["dropout"]))
    line = (
        f"{describe_runs(result)}. Chosen on validation: {choice}, mean best validation accuracy {best['val']} over "
        f"{_count(best['runs'], 'seed')}; its test accuracy (reported, never used to choose) {best['test']}."
    )
    if not result.verdicts:
        line += f" No paired test: {result.untested}." if result.untested else ""
    else:
        by_outcome = {
            outcome: [v for v in result.verdicts if v.outcome == outcome] for outcome in ("level", "worse", "better")
        }
        names = lambda verdicts: ", ".join(setting_words(v.setting) for v in verdicts)  # noqa: E731
        line += " On the same test digits, paired seed by seed:"
        if by_outcome["level"]:
            level = by_outcome["level"]
            line += f" no clear difference from the choice for {names(level)} ({_p_bound(level, at_least=True)});"
        if by_outcome["worse"]:
            worse = by_outcome["worse"]
            line += f" worse than the choice by {_points(worse)} ({_p_bound(worse, at_least=False)}): {names(worse)};"
        if by_outcome["better"]:
            better = by_outcome["better"]
            line += (
                f" better than the choice by {_points(better)} ({_p_bound(better, at_least=False)}), which validation "
                f"did not choose: {names(better)};"
            )
        line = line.removesuffix(";") + "."
        if result.untested:
            line += f" Not tested: {result.untested}."
    if (result.summary["runs"] == 1).all():
        line += (
            " Each setting has one run (one seed is one sample): the seed-to-seed spread is in no interval or test, "
            "so this cannot separate settings; `--seeds 0 1 2` runs three seeds per setting."
        )
    return line


def notes(result: Comparison) -> list[str]:
    """What the report and stdout both say: the shared settings, a warning on mixed ones, the plots command."""
    lines = [
        ("The run had: " if len(result.runs) == 1 else f"All {len(result.runs)} runs had: ")
        + ", ".join(f"{key}={value}" for key, value in result.shared.items())
    ]
    if result.mixed:
        differing = "; ".join(f"{key} ({', '.join(values)})" for key, values in result.mixed.items())
        lines.append(
            f"WARNING: these runs differ in more than {', '.join(AXES)}: {differing}; the comparison mixes settings"
        )
    number_order = lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]  # noqa: E731
    names = " ".join(dict.fromkeys(sorted(result.runs["name"].dropna(), key=number_order)))  # sweep-2 before sweep-10
    if len(result.left_out):
        lines.append(f"Left out: {len(result.left_out)} run(s), each with its reason in the report's last table")
    return [*lines, f"Training curves of these runs (DVC experiments of the same names): dvc plots diff {names} --open"]


def markdown_table(frame: pd.DataFrame, left: int = 1) -> str:
    """A markdown table, numbers in FORMATS (blank when missing), the first `left` columns left-aligned."""

    def cell(value, name):
        if value is None or (not isinstance(value, (Estimate, stats.Interval)) and pd.isna(value)):
            return ""
        return str(value) if isinstance(value, (Estimate, stats.Interval)) else format(value, FORMATS.get(name, ""))

    cells = frame.apply(lambda column: column.map(lambda value: cell(value, column.name)))
    return cells.rename(columns=HEADERS).to_markdown(
        index=False, disable_numparse=True, colalign=["left"] * left + ["right"] * (frame.shape[1] - left)
    )


VAL_COLUMN = "validation accuracy, mean [95 %]"
TEST_COLUMN = "test accuracy, mean [95 %]"
CHOICE_MARK = "← chosen on validation"


def settings_table(result: Comparison) -> pd.DataFrame:
    """The settings as ranked on validation (best first, the choice marked), accuracies with their 95 % intervals."""
    table = result.summary[["activation", "dropout", "runs", "val", "test", "seconds"]].copy()
    table[" "] = [CHOICE_MARK] + [""] * (len(table) - 1)
    return table.rename(
        columns={"runs": "runs (seeds)", "val": VAL_COLUMN, "test": TEST_COLUMN, "seconds": "training seconds, mean"}
    )


def verdicts_table(result: Comparison) -> pd.DataFrame:
    """Each other setting against the choice on the same test digits: differences signed as setting minus choice,
    so a negative number means the setting did worse."""
    return pd.DataFrame(
        [
            {
                "setting": setting_name(v.setting),
                "seeds paired": " ".join(f"{seed:g}" for seed in v.paired.seeds),
                "digits the choice got right on more seeds": v.paired.only_first,
                "digits this setting got right on more seeds": v.paired.only_second,
                "this setting minus the choice, accuracy points [95 %]": (
                    f"{-100 * v.paired.accuracy_difference:+.2f} "
                    f"{stats.Interval(-v.paired.difference.high, -v.paired.difference.low).points()}"
                ),
                "p": stats.p_text(v.paired.p_value).removeprefix("p = "),
                "Holm-adjusted p": stats.p_text(v.p_holm).removeprefix("p = "),
                "against the choice": OUTCOMES[v.outcome],
            }
            for v in sorted(result.verdicts, key=lambda v: v.p_holm, reverse=True)
        ]
    )


def markdown(result: Comparison) -> str:
    title = "all runs" if result.sweep_id == ALL else f"sweep `{result.sweep_id}`"
    parts = [
        f"# {grid_title(result)}: {title}",
        f"{len(result.runs)} finished run(s) from the MLflow store `{location.tracking_uri()}`. Validation chooses; "
        "the test digits only report. Every accuracy carries its 95 % interval: a t-interval over seeds where a "
        "setting has several runs, Wilson's from the digits for one run.",
        f"**{headline(result)}**",
        *notes(result),
        "![validation and test accuracy per setting with 95 % intervals, and validation accuracy per epoch]"
        "(figures/compare.png)",
        "## Settings, ranked on validation (best first)",
        markdown_table(settings_table(result)),
    ]
    if result.verdicts:
        parts += [
            "## Each setting against the choice, on the same test digits",
            "Paired seed by seed: for each test digit, the share of the seeds both settings ran on which each got it "
            "right. The two counts are the digits one setting got right on more of those seeds than the other. The difference is "
            "this setting's accuracy minus the choice's, in percentage points: **negative means this setting did "
            f"worse**; its 95 % interval from {stats.BOOTSTRAP_RESAMPLES:,} bootstrap resamples of the digits. `p` is a "
            "paired t-test of the per-digit differences (the exact McNemar test where each digit is simply right or "
            f"wrong in both, as with one seed each); Holm's correction adjusts it for the "
            f"{_count(len(result.verdicts), 'test')}. *No clear difference* means a Holm-adjusted p of {stats.ALPHA:g} or more: the test digits do "
            f"not tell the two apart. The per-digit answers: {result.answers_from}.",
            markdown_table(verdicts_table(result)),
        ]
    if result.untested:
        parts.append(f"No paired test: {result.untested}.")
    for axis, table in result.effects.items():
        other = next(name for name in SETTING if name != axis)
        parts += [
            f"## Main effect of {axis} (averaged over {other}, per seed first)",
            markdown_table(table.rename(columns={"runs": "runs", "val": VAL_COLUMN, "test": TEST_COLUMN})),
        ]
    parts += [
        "## The runs (each one sample)",
        markdown_table(
            result.runs.sort_values(AXES)[
                ["name", *AXES, "best_val_accuracy", "test_accuracy", "test_interval", "train_seconds", "run_id"]
            ],
            left=2,
        ),
    ]
    if len(result.left_out):
        parts += [
            f"## Runs left out ({len(result.left_out)})",
            markdown_table(result.left_out[["name", "run_id", "status", "reason"]], left=4),
        ]
    return "\n\n".join(parts) + "\n"


# one colour per activation, the same in every panel and every figure (params.Activation's order)
ACTIVATION_COLOURS = dict(zip(get_args(Activation), ["C0", "C1", "C2", "C3", "C4"]))
CHOICE_LABEL = "chosen on validation"


def _accuracy_panel(panel, result: Comparison, split: str, title: str) -> None:
    """Mean accuracy per setting with its 95 % interval, each run a faint dot. x is the dropout at its value when
    dropout varied; else the activation, one position each."""
    summary, runs = result.summary, result.runs
    order = list(ACTIVATION_COLOURS)  # the params' order: relu, tanh, sigmoid, ...
    activations = sorted(
        summary["activation"].unique(), key=lambda name: (order.index(name) if name in order else 99, name)
    )
    dropouts = sorted(summary["dropout"].unique())
    by_dropout = len(dropouts) > 1
    span = dropouts[-1] - dropouts[0] if by_dropout else 1.0

    def x_of(activation: str, dropout: float) -> float:
        index = activations.index(activation)
        if not by_dropout:
            return float(index)
        return dropout + 0.015 * span * (index - (len(activations) - 1) / 2)  # dodged, still at its value

    best = chosen(result)
    for activation in activations:
        colour = ACTIVATION_COLOURS.get(activation, "C7")
        cells = summary[summary["activation"] == activation]
        x = [x_of(activation, dropout) for dropout in cells["dropout"]]
        means = [value.mean for value in cells[split]]
        errors = np.array(
            [[v.mean - v.interval.low, v.interval.high - v.mean] if v.interval else [0, 0] for v in cells[split]]
        ).T
        panel.errorbar(x, means, yerr=errors, fmt="o", capsize=4, color=colour, label=activation, zorder=2)
        own = runs[runs["activation"] == activation]
        panel.scatter(
            [x_of(activation, dropout) for dropout in own["dropout"]],
            own[SPLITS[split]],
            s=12,
            color=colour,
            alpha=0.35,
            zorder=1,
        )
    panel.plot(  # a ring around the chosen setting's mean, which stays visible inside it
        x_of(best["activation"], best["dropout"]),
        best[split].mean,
        marker="o",
        markersize=15,
        markerfacecolor="none",
        markeredgecolor="black",
        markeredgewidth=2,
        linestyle="none",
        zorder=3,
        label=CHOICE_LABEL,
    )
    if by_dropout:
        panel.set(xticks=dropouts, xticklabels=[number_text(d) for d in dropouts], xlabel="dropout")
    else:
        panel.set(
            xticks=range(len(activations)),
            xticklabels=activations,
            xlabel=f"activation (dropout {number_text(dropouts[0])} in every run)",
        )
        panel.set_xlim(-0.6, len(activations) - 0.4)
    panel.set(ylabel="accuracy", title=title, label=split)
    panel.grid(alpha=0.3)


def _curve_panel(panel, result: Comparison, dropout: float, limits) -> None:
    """Validation accuracy per epoch at one dropout, one line per activation: the mean over seeds, its 95 % band."""
    from matplotlib.ticker import MaxNLocator

    for (activation, curve_dropout), curve in sorted(result.curves.items()):
        if curve_dropout != dropout or curve.empty:
            continue
        colour = ACTIVATION_COLOURS.get(activation, "C7")
        panel.plot(
            curve["epoch"], curve["mean"], marker="o" if len(curve) < 6 else None, color=colour, label=activation
        )
        panel.fill_between(curve["epoch"], curve["low"], curve["high"], color=colour, alpha=0.2)
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    if limits is not None:
        panel.set_ylim(*limits)
    panel.set(
        xlabel="epoch",
        ylabel="validation accuracy",
        title=f"dropout {number_text(dropout)}: validation accuracy per epoch",
        label=f"curves {number_text(dropout)}",
    )
    panel.grid(alpha=0.3)


def figure(result: Comparison):
    """Top: mean validation accuracy (which chooses) and test accuracy (reported only) per setting, 95 % intervals.
    Below: validation accuracy per epoch, one panel per dropout. A colour is an activation throughout; one legend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    dropouts = sorted(result.summary["dropout"].unique())
    fig = plt.figure(figsize=(max(12, 4.5 * len(dropouts)), 9.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    val_panel, test_panel = top.subplots(1, 2, sharey=True)
    _accuracy_panel(val_panel, result, "val", "Validation accuracy: this chooses the setting")
    _accuracy_panel(test_panel, result, "test", "Test accuracy: reported only, never used to choose")
    test_panel.tick_params(labelleft=True)
    # one y scale for every curve panel; past 5 epochs, from epoch 2 on (epoch 1 would flatten the rest)
    curves = [curve[curve["epoch"] > 1] if len(curve) > 5 else curve for curve in result.curves.values()]
    low, high = (pd.concat([curve[column] for curve in curves]) for column in ("low", "high"))
    limits = (low.min() - 0.002, min(1.0, high.max() + 0.002)) if len(low) else None
    for panel, dropout in zip(np.atleast_1d(bottom.subplots(1, len(dropouts), sharey=True)), dropouts):
        _curve_panel(panel, result, dropout, limits)
    handles, labels = val_panel.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda index: labels[index] == CHOICE_LABEL)  # the activations first
    fig.legend(
        [handles[index] for index in order],
        [labels[index] for index in order],
        loc="outside lower center",
        title="colour: activation; each faint dot one run",
        ncols=len(labels),
    )
    title = "all runs" if result.sweep_id == ALL else f"sweep {result.sweep_id}"
    fig.suptitle(f"{grid_title(result)}, {title}: {describe_runs(result)}", x=0.02, ha="left")
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
