"""A sweep is an Optuna study: workers on any number of machines share it through one storage.

The study holds its own definition (a grid or a search space, the `--set` values, the commit), so a
worker that joins runs only the study's settings, and one on another commit is refused. A grid is
enqueued up front as WAITING trials carrying GridSampler's grid ids; a search asks TPE for each trial.
Each trial is one `dvc exp run --temp` (a DVC experiment `<study>-<trial>`, its MLflow run tagged
sweep_id and sweep_trial) and its objective is the best **validation** accuracy, never test.

Faults: a worker records a heartbeat while it runs a trial; once it stops for the grace period (a
SIGKILL, a machine gone), any other worker marks the trial FAIL, ends its MLflow run KILLED and
enqueues it again (Optuna's RetryHeartbeatStaleTrialCallback). Two workers can pop the same grid
point only in a race; the later trial then yields (PRUNED), so no point is COMPLETE twice.

Storage: STUDY_STORAGE (the team's PostgreSQL, e.g. postgresql+psycopg://mlflow@host:5432/mlflow_studies,
the password in PGPASSWORD), else `<repo>/optuna.db` (SQLite), made before any worker starts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mnist_mlp.experiments import space as search_space
from mnist_mlp.experiments.sweep import (
    GRID,
    Sweep,
    SweepError,
    _parse_set,
    _validate,
    check_size,
    override_text,
    threads_per_worker,
    with_own_scripts,
)
from mnist_mlp.params import SWEEP_KEYS

# heartbeats and their stale-trial check are "experimental" since Optuna 2.9, and what this module is built on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # each worker prints its own line per trial

STORAGE_ENV = "STUDY_STORAGE"
LOCAL_STORAGE = "optuna.db"  # in the repo, git-ignored
LOGS = Path("build") / "studies"  # <repo>/build/studies/<study>/<experiment>.log: each trial's `dvc exp run`
HEARTBEAT_S = 5.0  # a running trial's worker writes a heartbeat this often
GRACE_S = 20.0  # ... and is taken for dead after this long without one (4 missed heartbeats)
POLL_S = 2.0  # an idle worker looks for retried trials this often while others run
DATABASE_PATIENCE_S = 120.0  # a worker waits this long for a storage that went away, then stops
DEFINITION = "mnist_mlp.definition"  # the study's user attribute holding its Definition


class StudyError(SweepError):
    """A study that cannot be made, joined or run."""


class TrialFailed(StudyError):
    """A trial's `dvc exp run` failed: the trial ends FAIL and the worker goes on."""


@dataclass(frozen=True)
class Definition:
    """What every worker of a study runs: the grid or search space, the --set values, the base commit."""

    kind: str  # "grid" or "search"
    base: str  # <commit>[+<key taken from the workspace>...] (tracking.sweep_base)
    experiment: str  # the MLflow experiment
    sets: dict[str, str]  # key -> value as typed (Hydra's grammar, as `dvc exp run -S` reads it)
    grid: dict[str, list] = field(default_factory=dict)
    space: dict = field(default_factory=dict)  # space.Space as JSON

    @property
    def commit(self) -> str:
        return self.base.split("+")[0]

    @property
    def search(self) -> search_space.Space | None:
        return search_space.Space.model_validate(self.space) if self.kind == "search" else None

    @property
    def size(self) -> int:
        """Trials the study completes: the grid's points, or the search's trials."""
        if self.search:
            return self.search.trials
        size = 1
        for values in self.grid.values():
            size *= len(values)
        return size

    def sampler(self) -> optuna.samplers.BaseSampler:
        if self.search:
            # no seed: workers seeded alike would draw the same startup trials; constant_liar: a worker's
            # TPE counts the others' running trials as bad, so they spread instead of piling on one point
            return optuna.samplers.TPESampler(n_startup_trials=self.search.startup_trials, constant_liar=True)
        return optuna.samplers.GridSampler(self.grid)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's values. A trial enqueued or edited in the shared storage carries its own params: one that is
        not a point of the definition's grid or space is pruned before anything runs, the reason in its `refused`
        attribute (pruned: it takes no place of the search's trials, and the grid's points still run)."""
        try:
            values = (
                self.search.suggest(trial)
                if self.search
                else {key: trial.suggest_categorical(key, choices) for key, choices in self.grid.items()}
            )
            stray = next((f"{key}={value!r}" for key, value in values.items() if not self._holds(key, value)), None)
        except ValueError as exc:  # Optuna's own refusal of a fixed value outside a categorical's choices
            stray = str(exc).splitlines()[0][:200]
        if stray is not None:
            refused = f"not a point of study {trial.study.study_name}'s {self.kind}: {stray}; nothing ran"
            trial.set_user_attr("refused", refused)
            raise optuna.TrialPruned(refused)
        return values

    def _holds(self, key: str, value: Any) -> bool:
        if not self.search:
            return any(value == choice and type(value) is type(choice) for choice in self.grid[key])
        dimension = self.search.space[key]
        if dimension.choice is not None:
            return value in dimension.choice
        low, high = dimension.float or dimension.int
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def grid_definition(sweep: Sweep, base: str, experiment: str, taken: dict[str, Any]) -> Definition:
    """A grid study from a planned sweep; `taken`: workspace values a --from-workspace sweep runs with
    (kept as --set values, so a worker elsewhere runs them too)."""
    sets = {**{key: override_text(key, value).split("=", 1)[1] for key, value in taken.items()}, **sweep.sets}
    return Definition("grid", base, experiment, sets, grid=sweep.grid)


def search_definition(
    space: search_space.Space, sets: dict[str, str], base: str, experiment: str, taken: dict[str, Any]
) -> Definition:
    sets = {**{key: override_text(key, value).split("=", 1)[1] for key, value in taken.items()}, **sets}
    return Definition("search", base, experiment, sets, space=space.model_dump(mode="json"))


# --- storage ---------------------------------------------------------------------------------------


def storage_url(root: Path) -> str:
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{Path(root).resolve() / LOCAL_STORAGE}"


def shown(url: str) -> str:
    """The storage URL as printed: never a password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A trial whose worker stopped sending heartbeats: its MLflow run ends KILLED, the trial runs again."""
    from mnist_mlp.tracking.stale import close_trial_runs

    definition = definition_of(study)
    reason = f"trial {trial.number} of study {study.study_name} lost its worker (no heartbeat for {GRACE_S:g} s)"
    ended = close_trial_runs(definition.experiment, study.study_name, trial.number, reason)
    print(
        f"study {study.study_name}: {reason}; its MLflow run(s) {', '.join(ended) or '(none started)'} "
        "ended KILLED; enqueued again",
        flush=True,
    )
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)


class _Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose heartbeat outlives a storage that is briefly away: Optuna's heartbeat thread
    dies at the first failed write, and the trial, still running, would be taken for dead once the storage is back."""

    def record_heartbeat(self, trial_id: int) -> None:
        import sqlalchemy.exc

        try:
            super().record_heartbeat(trial_id)
        except sqlalchemy.exc.OperationalError:
            pass  # the next beat tries again; away longer than the grace period, the trial goes back to the study


def open_storage(url: str, heartbeat_s: float = HEARTBEAT_S, grace_s: float = GRACE_S) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; made (tables and all) on first use."""
    import sqlalchemy.exc

    engine = {"pool_pre_ping": True}  # a connection the server dropped is replaced, not used
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": 60}  # several local workers write one file
    try:
        storage = _Storage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=int(heartbeat_s),
            grace_period=int(grace_s),
            heartbeat_stale_trial_callback=_on_stale,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StudyError(
            f"study storage {shown(url)}: cannot open it ({reason}); set {STORAGE_ENV} to a reachable "
            "database, or unset it for this repo's own optuna.db"
        ) from None
    if url.startswith("sqlite"):
        _serialize_sqlite(storage.engine)
    return storage


def _serialize_sqlite(engine) -> None:
    """Every SQLite transaction BEGIN IMMEDIATE: SQLite ignores SELECT ... FOR UPDATE, and Python's sqlite3 runs a
    SELECT outside any transaction, so two workers popping the same WAITING trial would both win (seen: two
    workers ran trial 0 and one crashed telling it). PostgreSQL's row locks need none of this."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners were attached


def definition_of(study: optuna.Study) -> Definition:
    data = study.user_attrs.get(DEFINITION)
    if not isinstance(data, dict):
        raise StudyError(
            f"study {study.study_name}: no mnist-mlp definition in it; it was not made by `mnist-mlp sweep`"
        )
    try:
        definition = Definition(**data)
    except TypeError as exc:
        raise StudyError(f"study {study.study_name}: its definition does not read ({exc})") from None
    check_definition(study.study_name, definition)
    return definition


def check_definition(name: str, definition: Definition) -> None:
    """A definition read from a shared storage is untrusted: every key and value goes through the checks a
    command line's do (`--set` items as `sweep.plan` parses them, the grid and space against the params schema)
    before any of it reaches `dvc exp run -S`, where a `file:key=...` item could rewrite another file."""
    from mnist_mlp.params import ParamsError

    where = f"study {name}'s definition"
    try:
        if definition.kind not in ("grid", "search"):
            raise StudyError(f"kind {definition.kind!r}: expected grid or search")
        if (
            not isinstance(definition.sets, dict)
            or not isinstance(definition.grid, dict)
            or not isinstance(definition.space, dict)
        ):
            raise StudyError("sets, grid and space must be mappings")
        if stray := sorted(set(definition.grid) - set(GRID)):
            raise StudyError(f"grid keys {stray}: expected some of {sorted(GRID)}")
        if not all(isinstance(values, list) for values in definition.grid.values()):
            raise StudyError("each grid key must hold a list of values")
        check_size(definition.grid)
        _validate({"tracking.sweep_base": definition.base, "tracking.experiment": definition.experiment}, where)
        for key, values in definition.grid.items():
            for value in values:
                _validate({key: value}, where)
        # together, as `plan` checks a command line's: one key's range can depend on another's (elastic_sigma)
        _validate(dict(_parse_set(f"{key}={value}") for key, value in definition.sets.items()), where)
        if definition.kind == "search":
            search_space.parse(definition.space, where, fixed={*definition.sets, *SWEEP_KEYS})
    except (SweepError, ParamsError, search_space.SpaceError, TypeError) as exc:
        raise StudyError(f"{where} is refused: {exc}") from None


def create(name: str, definition: Definition, storage) -> optuna.Study:
    """A new study holding `definition`; a grid's points enqueued as WAITING trials, in grid order."""
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=definition.sampler(), direction="maximize"
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(
            f"study {name} already exists in {shown(storage.url)}: `--join` works on it; or choose another --study"
        ) from None
    study.set_user_attr(DEFINITION, asdict(definition))
    if definition.kind == "grid":
        sampler = definition.sampler()
        distributions = {
            key: optuna.distributions.CategoricalDistribution(values) for key, values in definition.grid.items()
        }
        for grid_id, point in enumerate(sampler._all_grids):  # GridSampler's own order and ids
            params = dict(zip(sampler._param_names, point))
            study.add_trial(
                optuna.trial.create_trial(
                    state=TrialState.WAITING,
                    params=params,
                    distributions=distributions,
                    system_attrs={"grid_id": grid_id, "search_space": sampler._search_space},
                )
            )
    return study


def load(name: str, storage) -> tuple[optuna.Study, Definition]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StudyError(
            f"no study {name} in {shown(storage.url)}; start it with `mnist-mlp sweep --study {name}` "
            f"(without --join), or point {STORAGE_ENV} at the storage that holds it"
        ) from None
    definition = definition_of(study)
    study.sampler = definition.sampler()
    return study, definition


# --- a worker --------------------------------------------------------------------------------------


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


def _retried(trials: list) -> set[int]:
    """Numbers of the trials a heartbeat failed and the study enqueued again."""
    return {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}


def progress(definition: Definition, trials: list) -> tuple[int, int]:
    """(trials ended, of the study's size): COMPLETE ones, and those that failed for good."""
    retried = _retried(trials)
    ended = [
        t for t in trials if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in retried)
    ]
    return len(ended), definition.size


def has_work(definition: Definition, trials: list) -> bool:
    """A WAITING trial (a grid point, a retry), or a search short of its trials."""
    if any(trial.state == TrialState.WAITING for trial in trials):
        return True
    if definition.kind != "search":
        return False
    live = [t for t in trials if t.number not in _retried(trials) and t.state != TrialState.PRUNED]
    return len(live) < definition.size


def _yield_duplicate(study: optuna.Study, trial: optuna.Trial, values: dict) -> None:
    """Two workers took the same grid point (a race): the trial with the higher number yields."""
    for other in study.get_trials(deepcopy=False):
        if other.number == trial.number or other.params != values:
            continue
        if other.state == TrialState.COMPLETE or (
            other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number
        ):
            raise optuna.TrialPruned(f"grid point {values} is trial {other.number}'s")


def describe(values: dict) -> str:
    return ", ".join(
        f"{key.split('.')[-1]}={value:.4g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"
        for key, value in values.items()
    )


# A shell between the worker and its command: in a process group of its own with the command and everything the
# command starts (DVC's stages), told by the kernel when the worker dies (PR_SET_PDEATHSIG), it then ends the group.
# So a killed worker leaves no `dvc exp run` to finish its trial while the trial is retried elsewhere.
_GROUP_ENDS_WITH_WORKER = 'trap "trap - TERM; kill -TERM 0" TERM; "$@" & wait $!'
_PR_SET_PDEATHSIG = 1


def _end_with_parent() -> None:
    """In the child, before it runs anything: SIGTERM when the process that started it dies (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run_ending_with_worker(command: list[str], cwd: Path, log: Path) -> int:
    """`command`'s exit code, its output in `log`; it and every process it starts end if this process dies."""
    with log.open("w") as out:
        return subprocess.run(
            ["sh", "-c", _GROUP_ENDS_WITH_WORKER, "sh", *command],
            cwd=cwd,
            env=with_own_scripts(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_end_with_parent if sys.platform == "linux" else None,
        ).returncode


def _dvc(root: Path, args: list[str], log: Path) -> int:
    return run_ending_with_worker(["dvc", *args], root, log)


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
        if _dvc(root, ["exp", "run", "--temp", "-n", name, *[part for item in sets for part in ("-S", item)]], log):
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
    serve(study, definition, objective(root, study, definition, push), poll_s)


def serve(study: optuna.Study, definition: Definition, run_trial, poll_s: float = POLL_S) -> None:
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
        print(
            f"[{ended}/{size} done, {time.monotonic() - started:.0f} s] trial {trial.number} "
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


# --- the command -----------------------------------------------------------------------------------


def run_workers(root: Path, name: str, url: str, jobs: int, push: str | None = None) -> None:
    """`jobs` worker processes on this machine (each its share of the cores), until the study is done."""
    if jobs == 1:
        work(root, name, url, push)
        return
    threads = threads_per_worker(jobs)
    env = {**with_own_scripts(), STORAGE_ENV: url, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [
        str(Path(sysconfig.get_path("scripts")) / "mnist-mlp"),
        "sweep",
        "--as-worker",
        "--study",
        name,
        *(["--push", push] if push else []),
    ]
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


def finish(study: optuna.Study, definition: Definition, wall_s: float, jobs: int) -> None:
    """Print the trials and the overhead; a study with trials that failed for good raises."""
    import pandas as pd

    table = trials_table(study)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(
            f"study {study.study_name} ({definition.kind}, {definition.size} trials, chosen on validation):\n{table.to_string()}"
        )
    print(overhead_line(table, wall_s, jobs), flush=True)
    trials = study.get_trials(deepcopy=False)
    ended, size = progress(definition, trials)
    retried = _retried(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
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


def taken_values(root: Path, keys: list[str]) -> dict[str, Any]:
    """The workspace's params.yaml values of `keys` (section.key)."""
    import yaml

    params = yaml.safe_load((Path(root) / "params.yaml").read_text())
    values = {}
    for key in keys:
        node = params
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


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
    threads = threads_per_worker(jobs)
    print(
        f"study {name}: {definition.size} {'grid points' if definition.kind == 'grid' else 'TPE trials'} on {jobs} "
        f"worker(s) here ({threads} thread(s) each where train.threads is 0); study storage {shown(url)}; MLflow store "
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


def experiment_of(root: Path, name: str) -> str:
    """The MLflow experiment a study's trials log to."""
    return load(name, open_storage(storage_url(root)))[1].experiment


# --- a search's report -----------------------------------------------------------------------------

SEARCH_REPORT = "search.md"  # reports/search.md


def importance_evaluator():
    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def _interval(accuracy: float, digits: float | None):
    """Wilson's 95 % interval of one run's accuracy on `digits` digits; None when their count is unknown."""
    from mnist_mlp.experiments import stats

    if not digits or digits != digits:  # unknown (NaN)
        return None
    return stats.accuracy_interval(round(accuracy * digits), int(digits))


def _wilson(accuracy: float, digits: float | None) -> str:
    interval = _interval(accuracy, digits)
    return f"{accuracy:.4f} {interval}" if interval else f"{accuracy:.4f}"


def verified_values(done, runs):
    """The completed trials whose value is their MLflow run's best_val_accuracy (MLflow's value kept), and
    {trial: why} for the others: a study storage is shared and untrusted, MLflow's metrics decide."""
    import math

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


def search_report(root: Path, name: str, reports: Path) -> str | None:
    """reports/search.md for a TPE search: the trials ranked on validation, the validation-best trial with
    its test accuracy beside it (reported, never choosing), and Optuna's parameter importances; the headline
    returned. None for a grid study (`compare` reports it as a sweep)."""
    import pandas as pd

    from mnist_mlp.tracking import predictions, queries, store

    study, definition = load(name, open_storage(storage_url(root)))
    if definition.kind != "search":
        return None
    table = trials_table(study)
    done = table[table["state"] == "COMPLETE"]
    if done.empty:
        raise StudyError(f"study {name}: no trial has completed yet")
    runs = queries.search_runs(definition.experiment, f"tags.sweep_id = {store.literal(name, 'study')}")
    by_id = runs.set_index("run_id") if not runs.empty else pd.DataFrame()
    done, unverified = verified_values(done, by_id)
    if done.empty:
        raise StudyError(
            f"study {name}: no completed trial has a finished MLflow run with its value: "
            + "; ".join(f"trial {trial}: {why}" for trial, why in unverified.items())
        )
    done = done.sort_values("best_val_accuracy", ascending=False, kind="stable")
    test = {
        run_id: by_id.loc[run_id].get("metrics.test_accuracy")
        for run_id in done["mlflow_run_id"]
        if run_id in by_id.index
    }
    val_digits = {
        run_id: pd.to_numeric(by_id.loc[run_id].get("params.preprocess.val_size"), errors="coerce") for run_id in test
    }
    best = done.iloc[0]
    logged = predictions.logged(best["mlflow_run_id"]) if best["mlflow_run_id"] in test else None
    best_test = test.get(best["mlflow_run_id"])
    test_text = (
        _wilson(best_test, len(logged.actual) if logged else None)
        if best_test == best_test and best_test is not None
        else "not logged"
    )
    # Optuna's fANOVA over the completed trials' validation accuracies (two or more); its forest seeded, so the
    # report and a reader's own call agree
    importances = (
        optuna.importance.get_param_importances(_with_values(study, done), evaluator=importance_evaluator())
        if len(done) >= 2
        else {}
    )
    best_low = _interval(best["best_val_accuracy"], val_digits.get(best["mlflow_run_id"]))
    overlapping = [
        trial
        for trial, row in done.iloc[1:].iterrows()
        if best_low is not None
        and (_interval(row["best_val_accuracy"], val_digits.get(row["mlflow_run_id"])) or best_low).high >= best_low.low
    ]
    space_keys = list(definition.space["space"])
    headline = (
        f"Chosen on validation: trial {best.name} ({best['experiment']}: {describe({k: best[k] for k in space_keys})}), "
        f"best validation accuracy {_wilson(best['best_val_accuracy'], val_digits.get(best['mlflow_run_id']))}; "
        f"its test accuracy {test_text} (reported once, not used to choose). "
        f"{len(done)} of {definition.size} trials completed"
        f"{f' ({len(unverified)} more left out: see the report)' if unverified else ''}; {len(overlapping)} other(s) have a validation interval "
        f"overlapping the chosen one's, so validation does not separate them from it."
    )
    ranked = done[["experiment", *space_keys, "best_val_accuracy", "train_seconds"]].copy()
    ranked["test_accuracy"] = [test.get(run_id) for run_id in done["mlflow_run_id"]]
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
    reports.mkdir(parents=True, exist_ok=True)
    (reports / SEARCH_REPORT).write_text("\n".join(lines))
    described = ", ".join(f"{key} {value:.2f}" for key, value in importances.items())
    return "\n".join(
        [
            headline,
            f"importances (Optuna, fANOVA on validation): {described or 'n/a'}",
            f"wrote {reports / SEARCH_REPORT}",
        ]
    )
