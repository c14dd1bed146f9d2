"""A sweep: a grid of queued DVC experiments run by `dvc queue start`, every run in one MLflow store.

Each grid point is `dvc exp run --queue -n <name> -S train.activation=.. -S train.dropout=..
-S tracking.sweep_id=<id>`. The sweep id is a param, not just an environment variable:

- it travels inside the queued experiment, whichever queue worker runs it;
- it changes the train stage's params, so the DVC run-cache cannot restore an earlier
  training of the same settings (which would skip training, hence its MLflow run).

Queued experiments run in throwaway copies under .dvc/tmp/exps/, where `mnist_mlp.tracking`
finds the workspace's store through DVC_ROOT; the store and experiment are created here
first, because two workers creating a new SQLite store at once race on its schema.
Workers inherit this process's environment: OMP_NUM_THREADS is set so that the workers
together use the cores once (oversubscribed OpenMP threads were measured 10-50x slower).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from mnist_mlp.errors import UserError
from mnist_mlp.params import validate_params

# "Missing": no longer listed, e.g. after `dvc queue remove`
DONE = {"Success", "Failed", "Missing"}
# the grid's own keys; a --set of them would silently override a grid axis
GRID_KEYS = {"train.activation", "train.dropout", "train.seed", "tracking.sweep_id"}
EXP_SHOW_COLUMNS = {
    "Experiment": "experiment",
    "train.activation": "activation",
    "train.dropout": "dropout",
    "train.seed": "seed",
    "test.accuracy": "test_accuracy",
    "train.best_val_accuracy": "best_val_accuracy",
    "train.best_epoch": "best_epoch",
    "reports/metrics.json:train.epochs": "epochs",
    "train.seconds": "train_seconds",
    "mlflow_run_id": "mlflow_run_id",
}


class SweepError(UserError, RuntimeError):
    """A sweep that cannot be queued, or whose experiments failed."""


@dataclass(frozen=True)
class Setting:
    activation: str
    dropout: float
    seed: Optional[int] = None

    def overrides(self) -> list[str]:
        values = {"train.activation": self.activation, "train.dropout": self.dropout}
        if self.seed is not None:
            values["train.seed"] = self.seed
        return [f"{key}={value}" for key, value in values.items()]

    def experiment_name(self, sweep_id: str) -> str:
        seed = f"-s{self.seed}" if self.seed is not None else ""
        return f"{sweep_id}-{self.activation}-do{self.dropout:g}{seed}"


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    settings: list[Setting]
    extra: list[str]  # further `key=value` overrides applied to every point

    def names(self) -> list[str]:
        return [setting.experiment_name(self.sweep_id) for setting in self.settings]

    def override(self, key: str) -> Optional[str]:
        """The value an --set gives `key`, if any."""
        values = [value for name, _, value in (item.partition("=") for item in self.extra) if name == key]
        return values[-1] if values else None


def new_sweep_id(now: Optional[datetime] = None) -> str:
    """A sortable id, unique to the second: the latest sweep is the largest."""
    return f"{(now or datetime.now()):%Y%m%d-%H%M%S}"


def _parse_value(text: str):
    # -S reads a value as YAML (dvc uses Hydra's grammar): 0.5 is a float, relu a string
    return yaml.safe_load(text) if text.strip() else text


def _validate(overrides: dict[str, object], source: str) -> None:
    nested: dict[str, dict] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name or "." in name:
            raise SweepError(f"{source}: '{key}' is not a section.key parameter such as train.epochs")
        nested.setdefault(section, {})[name] = value
    validate_params(nested, source=source)


def parse_sets(sets: Sequence[str]) -> list[str]:
    """Validate `section.key=value` overrides for every grid point (e.g. train.epochs=2)."""
    parsed = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SweepError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=2")
        if key in GRID_KEYS:
            raise SweepError(f"--set {item!r}: {key} is set by the sweep itself; use the grid options instead")
        parsed[key.strip()] = _parse_value(value)
    _validate(parsed, "--set")
    return [f"{key.strip()}={value}" for key, _, value in (item.partition("=") for item in sets)]


def plan(
    activations: Sequence[str],
    dropouts: Sequence[float],
    seeds: Sequence[int] = (),
    sets: Sequence[str] = (),
    sweep_id: Optional[str] = None,
) -> Sweep:
    """The grid activation x dropout (x seed), every point validated before anything is queued."""
    if not activations or not dropouts:
        raise SweepError("a sweep needs at least one activation and one dropout")
    sweep_id = sweep_id or new_sweep_id()
    _validate({"tracking.sweep_id": sweep_id}, "--sweep-id")
    settings = []
    for activation in dict.fromkeys(activations):
        for dropout in dict.fromkeys(dropouts):
            for seed in dict.fromkeys(seeds) or [None]:
                point = {"train.activation": activation, "train.dropout": float(dropout)}
                if seed is not None:
                    point["train.seed"] = seed
                _validate(point, f"sweep point {activation}/{dropout}")
                settings.append(Setting(activation, float(dropout), seed))
    return Sweep(sweep_id, settings, parse_sets(sets))


def threads_per_worker(jobs: int, cores: Optional[int] = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def _dvc(root: Path, args: list[str], env: Optional[dict] = None) -> str:
    # Output goes through a file, not a pipe: `dvc queue start` leaves daemon workers
    # holding its stdout, and reading a pipe would wait until they exit.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            code = subprocess.run(["dvc", *args], cwd=root, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL).returncode
        except FileNotFoundError:
            raise SweepError("`dvc` is not on PATH; run from the project's venv (make install)") from None
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        detail = (stderr or stdout).strip().splitlines()
        raise SweepError(f"dvc {' '.join(args[:3])} failed in {root}: {detail[-1] if detail else code}")
    return stdout


def queue(root: Path, sweep: Sweep, force: bool = False) -> None:
    """Queue one experiment per grid point (`force`: re-run every stage, upstream ones included)."""
    for setting, name in zip(sweep.settings, sweep.names()):
        overrides = [*setting.overrides(), f"tracking.sweep_id={sweep.sweep_id}", *sweep.extra]
        args = ["exp", "run", "--queue", "-n", name, *[part for item in overrides for part in ("-S", item)]]
        _dvc(root, args + (["--force"] if force else []))
        print(f"queued {name}: {' '.join(overrides)}", flush=True)


def queue_status(root: Path) -> tuple[dict[str, str], tuple[int, int]]:
    """{experiment name: status} and (active, idle) workers, from `dvc queue status`."""
    text = _dvc(root, ["queue", "status"])
    statuses = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        # Task, Name, Created (one or two words), Status
        if len(parts) >= 4 and re.fullmatch(r"[0-9a-f]{7,}", parts[0]):
            statuses[parts[1]] = parts[-1]
    match = re.search(r"Worker status: (\d+) active, (\d+) idle", text)
    workers = (int(match[1]), int(match[2])) if match else (0, 0)
    return statuses, workers


def start_workers(root: Path, jobs: int, env: dict[str, str], poll_s: float = 2.0, patience_s: float = 60.0) -> None:
    """`dvc queue start -j jobs` with `env`; first let idle workers of an earlier sweep exit.

    A live worker would run this sweep's experiments with its own, older environment;
    DVC stops an idle worker about 10 s after its queue runs dry.
    """
    deadline = time.monotonic() + patience_s
    _, (active, idle) = queue_status(root)
    while active == 0 and idle > 0 and time.monotonic() < deadline:
        time.sleep(poll_s)
        _, (active, idle) = queue_status(root)
    if active or idle:
        print(f"note: {active + idle} queue worker(s) already running keep their own environment "
              f"(thread count); `dvc queue stop` first for a clean start", flush=True)
    print(_dvc(root, ["queue", "start", "-j", str(jobs)], env={**os.environ, **env}).strip(), flush=True)


def wait(
    root: Path,
    names: list[str],
    poll_s: float = 10.0,
    status: Callable[[Path], tuple[dict[str, str], tuple[int, int]]] = queue_status,
    restart_workers: Optional[Callable[[], None]] = None,
) -> dict[str, str]:
    """Poll the queue until every experiment in `names` succeeded or failed; print each change.

    Queue workers can exit with experiments still queued (seen after a `dvc queue stop`:
    its shutdown message outlives it); then `restart_workers` starts new ones.
    """
    started = time.monotonic()
    last: dict[str, str] = {}
    stalled_polls = 0
    while True:
        statuses, workers = status(root)
        current = {name: statuses.get(name, "Missing") for name in names}
        done = sum(state in DONE for state in current.values())
        for name, state in current.items():
            if state != last.get(name):
                print(f"[{done}/{len(names)} done, {time.monotonic() - started:.0f}s] {name}: {state}", flush=True)
        last = current
        if done == len(names):
            return current
        running = any(state == "Running" for state in current.values())
        stalled_polls = stalled_polls + 1 if workers == (0, 0) and not running else 0
        if stalled_polls >= 2 and restart_workers is not None:
            print("note: no queue worker left with experiments still queued; starting workers again", flush=True)
            restart_workers()
            stalled_polls = 0
        time.sleep(poll_s)


def exp_show(root: Path, names: list[str]):
    """The sweep's rows of `dvc exp show` as a DataFrame (one column per param and metric used)."""
    import pandas as pd

    text = _dvc(root, ["exp", "show", "--csv", "--no-pager", "--drop", r"per_class|\.py$|\.pt$|^data/"])
    table = pd.read_csv(io.StringIO(text))
    table = table[table["Experiment"].isin(names)]
    columns = [column for column in EXP_SHOW_COLUMNS if column in table.columns]
    table = table[columns].rename(columns=EXP_SHOW_COLUMNS)
    return table.set_index("experiment").reindex([name for name in names if name in set(table["experiment"])])


def run_sweep(
    root: Path,
    sweep: Sweep,
    jobs: int = 2,
    experiment: str = "mnist-mlp",
    force: bool = False,
    poll_s: float = 10.0,
):
    """Queue, run and wait for a sweep; return its `dvc exp show` rows. Failed experiments raise."""
    from mnist_mlp import tracking

    if jobs < 1:
        raise SweepError(f"--jobs {jobs}: expected 1 or more queue workers")
    experiment_id = tracking.ensure_experiment(experiment)
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=root).returncode == 1:
        # e.g. left behind by a `dvc exp run` in the workspace: DVC queues the workspace as it is
        print("note: params.yaml differs from HEAD; every queued experiment starts from it "
              "(`git checkout params.yaml && dvc checkout` to sweep from the committed params)", flush=True)
    print(f"sweep {sweep.sweep_id}: {len(sweep.settings)} experiments, {jobs} worker(s); "
          f"MLflow store {tracking.tracking_uri()}, experiment '{experiment}' (id {experiment_id})", flush=True)
    queue(root, sweep, force=force)
    threads = threads_per_worker(jobs)
    env = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MNIST_MLP_SWEEP_ID": sweep.sweep_id,
    }
    start_workers(root, jobs, env)

    def restart_workers() -> None:
        _dvc(root, ["queue", "start", "-j", str(jobs)], env={**os.environ, **env})

    outcome = wait(root, sweep.names(), poll_s=poll_s, restart_workers=restart_workers)
    failed = [name for name, state in outcome.items() if state != "Success"]
    if failed:
        raise SweepError(
            f"{len(failed)} of {len(outcome)} experiments failed: {', '.join(failed)}; "
            f"see `dvc queue logs {failed[0]}`"
        )
    return exp_show(root, sweep.names())
