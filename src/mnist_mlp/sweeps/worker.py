"""One worker of a study: `python -m mnist_mlp.sweeps.worker --study NAME` takes the study's trials until none
is left or running. Each trial is one `dvc exp run --temp` (a DVC experiment `<study>-<trial>`, its MLflow run
tagged sweep_id and sweep_trial) and its objective is the best **validation** accuracy, never test.

Two workers can pop the same grid point only in a race; the later trial then yields (PRUNED), so no point is
COMPLETE twice. A worker that dies takes its `dvc exp run` with it; its trial is retried by the others.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mnist_mlp.params import override_text
from mnist_mlp.project import repo_root, run_cli
from mnist_mlp.sweeps.definition import Definition, StudyError, describe, has_work, progress
from mnist_mlp.sweeps.plan import with_own_scripts
from mnist_mlp.sweeps.storage import GRACE_S, HEARTBEAT_S, load, open_storage, storage_url
from mnist_mlp.tracking.failures import store_failure

LOGS = Path("build") / "studies"  # <repo>/build/studies/<study>/<experiment>.log: each trial's `dvc exp run`
POLL_S = 2.0  # an idle worker looks for retried trials this often while others run
DATABASE_PATIENCE_S = 120.0  # a worker waits this long for a storage that went away, then stops
PROGRESS_S = 5.0  # a running trial's epochs are looked up in MLflow this often


class TrialFailed(StudyError):
    """A trial's `dvc exp run` failed: the trial ends FAIL and the worker goes on."""


def check_joinable(root: Path, name: str, definition: Definition) -> None:
    """This clone runs the study's commit, with no params.yaml change the study would not override."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        head, changed = repo.scm.get_rev(), repo.params.diff().get("diff", {}).get("params.yaml", {})
    if head != definition.commit:
        raise StudyError(
            f"study {name} runs on commit {definition.commit[:7]}; this clone is at {head[:7]}: "
            f"`git fetch && git checkout {definition.commit[:7]}` first"
        )
    own = {
        *definition.grid,
        *definition.sets,
        *definition.space.get("space", {}),
        "tracking.sweep_id",
        "tracking.sweep_base",
        "tracking.trial",
    }
    if stray := sorted(key for key in changed if key not in own):
        raise StudyError(
            f"study {name}: params.yaml differs from {head[:7]} in {', '.join(stray)}, which every trial here "
            "would take; `git checkout params.yaml` first"
        )


def _yield_duplicate(study: optuna.Study, trial: optuna.Trial, values: dict) -> None:
    """Two workers took the same grid point (a race): the trial with the higher number yields."""
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or other.params != values:
            continue
        if other.state == TrialState.COMPLETE or (
            other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number
        ):
            raise optuna.TrialPruned(f"grid point {values} is trial {other.number}'s")


# command starts (DVC's stages), told by the kernel when the worker dies (PR_SET_PDEATHSIG), it then ends the group.
# So a killed worker leaves no `dvc exp run` to finish its trial while the trial is retried elsewhere.
_GROUP_ENDS_WITH_WORKER = 'trap "trap - TERM; kill -TERM 0" TERM; "$@" & wait $!'
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the child, before it runs anything: SIGTERM when the process that started it dies (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_ending_with_worker(
    command: list[str], cwd: Path, log: Path, while_running: Callable[[], None] | None = None
) -> int:
    """`command`'s exit code, its output in `log`; it and every process it starts end if this process dies (or
    raises). `while_running` is called every PROGRESS_S until it ends."""
    with log.open("w") as out:
        process = subprocess.Popen(
            ["sh", "-c", _GROUP_ENDS_WITH_WORKER, "sh", *command],
            cwd=cwd,
            env=with_own_scripts(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None,
        )
        try:
            while True:
                try:
                    return process.wait(timeout=PROGRESS_S)
                except subprocess.TimeoutExpired:
                    if while_running is not None:
                        while_running()
        finally:
            if process.poll() is None:  # this worker raised: the command's group ends with it
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()


def _dvc(root: Path, args: list[str], log: Path, while_running: Callable[[], None] | None = None) -> int:
    return run_ending_with_worker(["dvc", *args], root, log, while_running)


def _minutes(seconds: float) -> str:
    """`45 s`, `3 min 20 s`: a duration as a person reads it."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def epoch_reporter(definition: Definition, study_name: str, trial: int, name: str) -> Callable[[], None]:
    """Prints the trial's epochs as its MLflow run logs them (one line per new epoch count), with the time left."""
    from mnist_mlp.tracking.queries import trial_epochs

    started, shown = time.monotonic(), [0]

    def report() -> None:
        found = trial_epochs(definition.experiment, study_name, trial)
        if found is None or found[0] <= shown[0]:
            return
        done, planned = found
        shown[0] = done
        took = time.monotonic() - started
        left = f"; about {_minutes(took / done * (planned - done))} left in this trial" if planned > done else ""
        print(f"  trial {trial} {name}: epoch {done} of {planned} done after {_minutes(took)}{left}", flush=True)

    return report


def experiment_row(root: Path, name: str) -> dict:
    """`dvc exp show`'s row of one experiment (its params and metrics)."""
    import dvc.api

    rows = [row for row in dvc.api.exp_show(repo=str(root), revs=[name]) if row.get("rev") != "workspace"]
    if not rows:
        raise TrialFailed(f"DVC has no experiment {name} after its run")
    return rows[-1]


def objective(root: Path, study: optuna.Study, definition: Definition, push: str | None):
    logs = Path(root) / LOGS / study.study_name
    logs.mkdir(parents=True, exist_ok=True)

    def run_trial(trial: optuna.Trial) -> float:
        values = definition.suggest(trial)
        name = f"{study.study_name}-{trial.number}"
        trial.set_user_attr("dvc_exp_name", name)
        sets = [override_text(key, value) for key, value in values.items()]
        sets += [f"{key}={value}" for key, value in definition.sets.items()]
        # quoted: an id of digits stays a string
        sets += [
            f'tracking.sweep_id="{study.study_name}"',
            f'tracking.sweep_base="{definition.base}"',
            f"tracking.trial={trial.number}",
        ]
        log = logs / f"{name}.log"
        print(f"  trial {trial.number} {name} started: {describe(values)}", flush=True)
        command = ["exp", "run", "--temp", "-n", name, *[part for item in sets for part in ("-S", item)]]
        if _dvc(root, command, log, epoch_reporter(definition, study.study_name, trial.number, name)):
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise TrialFailed(
                f"trial {trial.number} ({name}) failed: {lines[-1] if lines else 'no output'}; its log: {log}"
            )
        row = experiment_row(root, name)
        trial.set_user_attr("mlflow_run_id", row.get("mlflow_run_id"))
        trial.set_user_attr("train_seconds", row.get("training.seconds"))
        if push and _dvc(root, ["exp", "push", push, name], logs / f"{name}.push.log"):
            raise TrialFailed(
                f"trial {trial.number} ({name}): `dvc exp push {push} {name}` failed; its log: {logs / f'{name}.push.log'}"
            )
        return float(row["training.best_val_accuracy"])

    return run_trial


def _storage_away(exc: BaseException) -> BaseException | None:
    """The storage error behind `exc`, if one is: SQLAlchemy's OperationalError (no connection), Optuna's
    StorageInternalError (a failed commit), and whatever Optuna raised while handling them (its `tell` failing
    mid-trial leaves an UnboundLocalError whose context is the real error)."""
    import sqlalchemy.exc

    seen = exc
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def storage_fix(reason: str) -> str:
    """What to do about a storage error, from its database's own words."""
    if "database or disk is full" in reason or "No space left" in reason:
        return "the disk that holds the study storage is full: free space there"
    if "database is locked" in reason:
        return "another process holds the SQLite study storage locked: let it finish or stop it"
    return "once it answers again"


def _patiently(call, what: str, patience_s: float = DATABASE_PATIENCE_S):
    """`call()`, waiting out a storage that went away (a restart, a network cut) for up to `patience_s`. A trial
    whose result could not be told stays RUNNING there without heartbeats: once the storage is back, it is taken
    for dead after the grace period and runs again, so its point is not lost."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return call()
        except Exception as exc:  # only a storage error is waited out; anything else is raised
            away = _storage_away(exc)
            if away is None:
                raise
            reason = str(getattr(away, "orig", None) or away.__cause__ or away).strip().splitlines()[0][:200]
            if time.monotonic() > deadline:
                raise StudyError(
                    f"{what}: the study storage did not answer for {patience_s:g} s ({reason}); "
                    f"{storage_fix(reason)}; nothing ended is lost: join again with --join"
                ) from None
            print(f"note: {what}: the study storage does not answer ({reason}); waiting", flush=True)
            time.sleep(5)


def work(
    root: Path,
    name: str,
    url: str,
    push: str | None = None,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    grace_s: float = GRACE_S,
) -> None:
    """One worker of this clone: take the study's trials until it has none left and none running."""
    storage = open_storage(url, heartbeat_s, grace_s)
    study, definition = load(name, storage)
    check_joinable(root, name, definition)
    take_trials(study, definition, objective(root, study, definition, push), poll_s)


def take_trials(study: optuna.Study, definition: Definition, run_trial, poll_s: float = POLL_S) -> None:
    """The worker loop: fail stale trials (others' dead workers), take a WAITING trial or a search's next one,
    wait while others run (one may die and come back); print each trial as it ends."""
    name, started = study.study_name, time.monotonic()

    def guarded(trial: optuna.Trial) -> float:
        if definition.kind == "grid":
            _yield_duplicate(study, trial, definition.suggest(trial))
        return run_trial(trial)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ended, size = progress(definition, study.get_trials(deepcopy=False))
        what = f"best val accuracy {trial.value:.4f}" if trial.state == TrialState.COMPLETE else trial.state.name
        seconds = trial.user_attrs.get("train_seconds")
        trained = f", trained {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        took = time.monotonic() - started
        # this worker's pace so far, over the trials every worker ended: the study's time left, roughly
        left = f"; about {_minutes(took / ended * (size - ended))} left" if 0 < ended < size else ""
        print(
            f"[{ended}/{size} done, {_minutes(took)}{left}] trial {trial.number} "
            f"{trial.user_attrs.get('dvc_exp_name', '')} ({describe(trial.params)}): {what}{trial_line(trial)}{trained}",
            flush=True,
        )

    while True:
        trials = _patiently(
            lambda: (optuna.storages.fail_stale_trials(study), study.get_trials(deepcopy=False))[1], f"study {name}"
        )
        if has_work(definition, trials):
            try:
                _patiently(
                    lambda: study.optimize(
                        guarded, n_trials=1, catch=(TrialFailed,), callbacks=[report], gc_after_trial=False
                    ),
                    f"study {name}",
                )
            except optuna.exceptions.UpdateFinishedTrialError as exc:  # the storage was away past the grace period
                print(
                    f"note: study {name}: {exc}: another worker took this trial while the storage was away; "
                    "its result is dropped, the retry's counts",
                    flush=True,
                )
        elif any(trial.state == TrialState.RUNNING for trial in trials):
            time.sleep(poll_s)  # another worker's trial may die and come back WAITING
        else:
            return


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    failed = trial.system_attrs.get("fail_reason") or trial.user_attrs.get("refused")
    return f" ({failed})" if failed else ""


def main(argv: list[str] | None = None) -> None:
    """A worker process `mnist-mlp sweep` starts (STUDY_STORAGE in its environment names the storage)."""
    parser = argparse.ArgumentParser(prog="python -m mnist_mlp.sweeps.worker", description=__doc__)
    parser.add_argument("--study", required=True, metavar="NAME")
    parser.add_argument("--push", metavar="REMOTE")
    args = parser.parse_args(argv)
    root = repo_root()
    run_cli("mnist-mlp sweep worker", lambda: work(root, args.study, storage_url(root), args.push), store_failure)


if __name__ == "__main__":
    main()
