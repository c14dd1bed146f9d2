"""Where a study lives: STUDY_STORAGE (the team's PostgreSQL, e.g.
postgresql+psycopg://mlflow@host:5432/mlflow_studies, the password in PGPASSWORD), else `<repo>/optuna.db` (SQLite),
made before any worker starts. Opening it, making a study in it, and reading one back (its definition checked).

Faults: a worker records a heartbeat while it runs a trial; once it stops for the grace period (a SIGKILL, a
machine gone), any other worker marks the trial FAIL, ends its MLflow run KILLED and enqueues it again (Optuna's
RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
from optuna.trial import TrialState

from mnist_mlp.sweeps.definition import DEFINITION, Definition, StudyError, check_definition

# heartbeats and their stale-trial check are "experimental" since Optuna 2.9, and what this module is built on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # each worker prints its own line per trial

STORAGE_ENV = "STUDY_STORAGE"
LOCAL_STORAGE = "optuna.db"  # in the repo, git-ignored
HEARTBEAT_S = 5.0  # a running trial's worker writes a heartbeat this often
GRACE_S = 20.0  # ... and is taken for dead after this long without one (4 missed heartbeats)


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


def load_study(root: Path, name: str) -> tuple[optuna.Study, Definition]:
    """The study `name` of this repo's storage (STUDY_STORAGE or optuna.db) and its checked definition."""
    return load(name, open_storage(storage_url(root)))
