"""`mnist-mlp sweep`: a sweep is an Optuna study that workers on any number of machines share through one storage.

The study holds its own definition (a grid or a search space, the `--set` values, the commit), so a worker that
joins runs only the study's settings, and one on another commit is refused. A grid is enqueued up front as
WAITING trials carrying GridSampler's grid ids; a search asks TPE for each trial. This module makes or joins a
study, starts this machine's workers (sweeps/worker.py) and prints the trials when they end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mnist_mlp.params import SWEEP_KEYS, values_at
from mnist_mlp.sweeps import plan as sweep_plan
from mnist_mlp.sweeps import space as search_space
from mnist_mlp.sweeps.definition import (
    Definition,
    StudyError,
    grid_definition,
    progress,
    retried,
    search_definition,
)
from mnist_mlp.sweeps.plan import threads_per_worker, with_own_scripts
from mnist_mlp.sweeps.storage import STORAGE_ENV, create, load, open_storage, shown, storage_url
from mnist_mlp.sweeps.worker import LOGS, check_joinable, work


def definition_from(
    root: Path,
    grid: sweep_plan.Sweep,
    experiment: str,
    search: Path | None = None,
    trials: int | None = None,
    from_workspace: bool = False,
) -> Definition:
    """The study a command line asks for: the planned grid, or with `search` a TPE search over that file's space
    (`trials` in all, default the file's); its base commit from the workspace (sweep_plan.sweep_base)."""
    searched = search_space.read(search, fixed={*grid.sets, *SWEEP_KEYS}) if search else None
    if searched and trials:
        searched = searched.model_copy(update={"trials": trials})
    keys = [*grid.sets, *(searched.space if searched else grid.grid)]
    base = sweep_plan.sweep_base(root, keys, from_workspace)
    taken = values_at(Path(root) / "params.yaml", base.split("+")[1:])
    if searched:
        return search_definition(searched, grid.sets, base, experiment, taken)
    return grid_definition(grid, base, experiment, taken)


def run_workers(root: Path, name: str, url: str, jobs: int, push: str | None = None) -> None:
    """`jobs` worker processes on this machine (each its share of the cores), until the study is done."""
    if jobs == 1:
        work(root, name, url, push)
        return
    threads = threads_per_worker(jobs)
    env = {**with_own_scripts(), STORAGE_ENV: url, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "mnist_mlp.sweeps.worker", "--study", name, *(["--push", push] if push else [])]
    # a session each: a worker killed with its group (a machine gone) takes no sibling with it
    workers = [
        subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(jobs)
    ]
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait()
    for worker, code in zip(workers, codes):
        if code:
            ended = f"was killed (signal {-code})" if code < 0 else f"stopped with exit {code} (above)"
            print(
                f"note: worker {worker.pid} {ended}; its trial, if any, went back to the study",
                file=sys.stderr,
                flush=True,
            )


def trials_table(study: optuna.Study):
    """One row per trial: number, state, DVC experiment, params, best val accuracy, training and trial seconds."""
    import pandas as pd

    rows = []
    for trial in study.get_trials(deepcopy=False):
        took = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "experiment": trial.user_attrs.get("dvc_exp_name"),
                **{key: value for key, value in trial.params.items()},
                "best_val_accuracy": trial.value,
                "train_seconds": trial.user_attrs.get("train_seconds"),
                "trial_seconds": took,
                "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
            }
        )
    return pd.DataFrame(rows).set_index("trial")


def overhead_line(table, wall_s: float, jobs: int) -> str:
    """Wall time against the packing limit: the training seconds of the trials that ended spread over the workers,
    or the longest training where that is longer (one trial is not split between workers)."""
    done = table[table["state"] == "COMPLETE"]
    seconds = done["train_seconds"].fillna(0)
    training, trials = float(seconds.sum()), float(done["trial_seconds"].fillna(0).sum())
    limit = max(training / max(jobs, 1), float(seconds.max()) if len(seconds) else 0.0)
    ratio = f"{wall_s / limit:.2f}x" if limit else "n/a"
    return (
        f"wall {wall_s:.0f} s on {jobs} worker(s) for {training:.0f} s of training ({trials:.0f} s of whole trials): "
        f"{ratio} the packing limit of {limit:.0f} s"
    )


BEST_MARK = "← best validation"


def ranked_table(table):
    """The trials as the sweep's last table shows them: best validation accuracy first (trials without one last),
    rounded, the params by their last name, the best trial marked."""
    ranked = table.sort_values("best_val_accuracy", ascending=False, na_position="last", kind="stable")
    ranked = ranked.drop(columns=["mlflow_run_id"]).rename(columns=lambda name: name.split(".")[-1])
    ranked = ranked.round({"train_seconds": 0, "trial_seconds": 0})
    accuracy = ranked["best_val_accuracy"]
    ranked[" "] = [BEST_MARK if accuracy.notna().any() else ""] + [""] * (len(ranked) - 1)
    # four decimals each, 0.9570 too (a column of floats would print 0.957); none where the trial has no value
    ranked["best_val_accuracy"] = [f"{value:.4f}" if known else "" for value, known in zip(accuracy, accuracy.notna())]
    return ranked


def finish(study: optuna.Study, definition: Definition, wall_s: float, jobs: int) -> None:
    """Print the trials ranked on validation and the overhead; a study with trials that failed for good raises."""
    import pandas as pd

    table = trials_table(study)
    seeds = len(definition.grid.get("train.seed", [])) > 1
    chooses = (
        "one run per trial; `mnist-mlp compare` chooses a setting over its seeds, with intervals"
        if seeds
        else "one run per trial; `mnist-mlp compare` adds intervals and paired tests"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:g}".format):
        print(
            f"study {study.study_name} ({definition.kind}, {definition.size} trials), ranked on best validation "
            f"accuracy ({chooses}):\n{ranked_table(table).to_string()}"
        )
    print(overhead_line(table, wall_s, jobs), flush=True)
    trials = study.get_trials(deepcopy=False)
    ended, size = progress(definition, trials)
    again = retried(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in again]
    if failed:
        raise StudyError(
            f"{len(failed)} of {size} trials of study {study.study_name} failed: "
            f"{', '.join(t.user_attrs.get('dvc_exp_name', str(t.number)) for t in failed)}; "
            f"their logs are in {LOGS / study.study_name}/"
        )
    if ended < size:
        raise StudyError(
            f"study {study.study_name}: {ended} of {size} trials ended; the rest are still running or waiting "
            "elsewhere: `mnist-mlp sweep --study NAME --join` works on them"
        )


def used_names(root: Path, name: str) -> list[str]:
    """DVC experiments already named like this study's trials (`<name>-<n>`), in any commit."""
    from dvc.repo import Repo

    pattern = re.compile(rf"^{re.escape(name)}-\d+$")
    with Repo(str(root)) as repo:
        return sorted(
            exp
            for entries in repo.experiments.ls(all_commits=True).values()
            for exp, _ in entries
            if exp and pattern.match(exp)
        )


def threads_line(root: Path, definition: Definition, jobs: int) -> str:
    """How many threads each trial trains on: train.threads as the trials get it, 0 being the worker's share."""
    given = definition.sets.get("train.threads")
    threads = (
        int(given) if given is not None else values_at(Path(root) / "params.yaml", ["train.threads"])["train.threads"]
    )
    if threads:
        return f"each trial trains on {threads} thread(s): train.threads"
    return f"each trial trains on {threads_per_worker(jobs)} thread(s): train.threads is 0, the worker's share of the cores"


def start(root: Path, name: str, definition: Definition, jobs: int, push: str | None = None) -> None:
    """Make the study (refused when it or its experiment names exist), run `jobs` workers here, report."""
    from mnist_mlp.tracking import location, store

    url = storage_url(root)
    if taken := used_names(root, name):
        raise StudyError(
            f"--study {name}: DVC already has experiments named {', '.join(taken[:4])}{' ...' if len(taken) > 4 else ''}; "
            f"choose another --study, or remove them first: dvc exp remove {' '.join(taken[:4])}"
        )
    storage = open_storage(url)
    experiment_id = store.ensure_experiment(definition.experiment, root)  # before two workers race to make the store
    study = create(name, definition, storage)
    print(
        f"study {name}: {definition.size} {'grid points' if definition.kind == 'grid' else 'TPE trials'} on {jobs} "
        f"worker(s) here ({threads_line(root, definition, jobs)}); study storage {shown(url)}; MLflow store "
        f"{location.tracking_uri(root)}, experiment '{definition.experiment}' (id {experiment_id}); more machines: "
        f"`mnist-mlp sweep --study {name} --join` with the same {STORAGE_ENV} and MLFLOW_TRACKING_URI",
        flush=True,
    )
    join(root, name, jobs, push, study=study, definition=definition)


def join(root: Path, name: str, jobs: int, push: str | None = None, study=None, definition=None) -> None:
    url, started = storage_url(root), time.monotonic()
    if study is None:
        study, definition = load(name, open_storage(url))
        check_joinable(root, name, definition)
        print(
            f"study {name}: joining with {jobs} worker(s) ({definition.kind}, {definition.size} trials); "
            f"study storage {shown(url)}",
            flush=True,
        )
    run_workers(root, name, url, jobs, push)
    finish(study, definition, time.monotonic() - started, jobs)
