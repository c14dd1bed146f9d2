"""A sweep: activation x dropout (x seed) as ONE `dvc exp run --queue` grid, run by DVC's queue workers.

DVC expands `-S 'train.activation=relu,tanh' -S 'train.dropout=0.0,0.5'` into its Cartesian product and
runs each point in a copy under .dvc/tmp/exps/ (tracking finds the store through DVC_ROOT). Added here:
a safe base (DVC queues params.yaml as the workspace has it; each run records its base in tracking.sweep_base),
the MLflow store made first (two workers creating a new SQLite store race), a share of the cores per
worker, waiting (restarting workers that exit leaving experiments queued), and a summary.

One sweep on several machines: `--shard K/N` queues every N-th grid point from the K-th, each under the
name the whole grid gives it (`<sweep id>-<index>`), on this machine's own queue; with one sweep id and
one tracking server, the shards' runs make up the whole grid there.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

from mnist_mlp.errors import UserError
from mnist_mlp.params import SWEEP_KEYS, validate_params

GRID = {"train.activation": "--activations", "train.dropout": "--dropouts", "train.seed": "--seeds"}
OWN_KEYS = {*GRID, *SWEEP_KEYS}
DEFAULT_AXES = {"train.activation": ["relu", "tanh", "sigmoid"], "train.dropout": [0.0, 0.2, 0.5]}
DONE = {"Success", "Failed", "Missing"}  # Missing: gone from DVC's queue, e.g. after `dvc queue remove`
SUMMARY = ["State", *GRID, "test.accuracy", "training.best_val_accuracy", "training.seconds", "mlflow_run_id"]  # dvc exp show's


class SweepError(UserError, RuntimeError):
    """A sweep that cannot be queued, or whose experiments failed."""


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    grid: dict[str, list]  # param -> its values
    sets: dict[str, str]  # --set param -> its value as typed (DVC reads it with Hydra's grammar)
    experiment: Optional[str] = None  # tracking.experiment, when --set gives it
    shard: tuple[int, int] = (1, 1)  # (K, N): the K-th of N parts of the grid; (1, 1) is all of it

    @property
    def size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    @property
    def names(self) -> list[str]:
        """DVC names a grid's experiments <name>-1..N (a single point is no grid: <name>); a shard has
        every N-th of them from the K-th, under the same names."""
        every = [self.sweep_id] if self.size == 1 else [f"{self.sweep_id}-{index}" for index in range(1, self.size + 1)]
        part, parts = self.shard
        return every[part - 1 :: parts]

    def points(self, base: str) -> list[tuple[str, list[str]]]:
        """(name, `-S` values) of each point of this shard, from DVC's own expansion of the grid: the
        name and values the whole grid's `dvc exp run --queue` gives that point."""
        from dvc.utils.hydra import get_hydra_sweeps

        expanded = get_hydra_sweeps({"params.yaml": self.overrides(base)[1::2]})
        part, parts = self.shard
        return list(zip(self.names, [point["params.yaml"] for point in expanded[part - 1 :: parts]]))

    def overrides(self, base: str) -> list[str]:
        """`-S` arguments: a comma list is a grid axis; ids are quoted, so that 123 stays a string."""
        values = {key: ",".join(map(str, values)) for key, values in self.grid.items()}
        values |= {"tracking.sweep_id": f'"{self.sweep_id}"', "tracking.sweep_base": f'"{base}"', **self.sets}
        return [part for key, value in values.items() for part in ("-S", f"{key}={value}")]


def _validate(values: dict[str, object], source: str) -> None:
    nested: dict[str, dict] = {}
    for key, value in values.items():  # a key without a section is reported as unknown
        *sections, name = key.split(".")  # train.augment.shift: nested sections
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    validate_params(nested, source=source)


def _parse_set(item: str):
    """One --set item as DVC reads `-S` (Hydra's grammar): (key, value)."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import HydraException

    try:
        (override,) = to_hydra_overrides([item])
    except HydraException:
        override = None
    if override is None or item.partition("=")[0] != override.key_or_group:
        raise SweepError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=2")
    if override.key_or_group in OWN_KEYS:
        raise SweepError(f"--set {item!r}: {override.key_or_group} is set by the sweep itself; use its own option")
    if override.is_sweep_override():
        raise SweepError(f"--set {item!r}: one value per key; the grid's axes are {', '.join(GRID.values())}")
    return override.key_or_group, override.value()


def override_text(key: str, value: object) -> str:
    """`key=value` as `dvc exp run -S` reads it (Hydra's grammar), with no space or quote, so that it also
    passes through the shell's word splitting in `dvc exp run $(mnist-mlp preset NAME)`."""
    import yaml

    # a list as compact JSON ([512,512], also YAML); `...` is YAML's end-of-document marker
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else \
        yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()  # fmt: skip
    if any(char.isspace() or char in "'\"" for char in text):
        raise SweepError(f"'{key}' = {text}: a value with spaces or quotes cannot pass through "
                         "`$(mnist-mlp preset ...)`; give it with -S on the command line")  # fmt: skip
    return f"{key}={text}"


def plan(activations: Sequence[str] = (), dropouts: Sequence[float] = (), seeds: Sequence[int] = (),
         sets: Sequence[str] = (), sweep_id: Optional[str] = None, shard: tuple[int, int] = (1, 1),
         preset: Optional[dict] = None) -> Sweep:  # fmt: skip
    """The grid, every value validated before anything is queued; the sweep id defaults to the time.

    `preset` (params.preset_values): every key of it goes as a --set (given `sets` win), and its activation
    and dropout are the axes' defaults.
    """
    if preset:
        activations = activations or [preset["train.activation"]]
        dropouts = dropouts or [preset["train.dropout"]]
        given = {item.split("=", 1)[0] for item in sets}
        sets = [override_text(key, value) for key, value in preset.items() if key not in OWN_KEYS | given] + list(sets)
    activations = activations or DEFAULT_AXES["train.activation"]
    dropouts = dropouts or DEFAULT_AXES["train.dropout"]
    if not activations or not dropouts:
        raise SweepError("a sweep needs at least one activation and one dropout")
    part, parts = shard
    if not 1 <= part <= parts:
        raise SweepError(f"--shard {part}/{parts}: expected K/N with 1 <= K <= N, e.g. 1/2")
    if parts > 1 and not sweep_id:
        raise SweepError(f"--shard {part}/{parts} needs --sweep-id: every machine's shard must log under the same id")
    sweep_id = sweep_id or f"{datetime.now():%Y%m%d-%H%M%S}"
    axes = zip(GRID, (activations, [float(dropout) for dropout in dropouts], seeds))
    grid = {key: list(dict.fromkeys(values)) for key, values in axes if values}
    for key, values in {**grid, "tracking.sweep_id": [sweep_id]}.items():
        for value in values:
            _validate({key: value}, GRID.get(key, "--sweep-id"))
    parsed = dict(map(_parse_set, sets))
    _validate(parsed, "--set")
    raw = dict(item.split("=", 1) for item in sets)
    planned = Sweep(sweep_id, grid, raw, parsed.get("tracking.experiment"), shard)
    if parts > planned.size:
        raise SweepError(f"--shard {part}/{parts}: the grid has {planned.size} point(s), fewer than {parts} parts")
    return planned


def threads_per_worker(jobs: int, cores: Optional[int] = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def with_own_scripts(env: Optional[dict] = None) -> dict:
    """`env` (default os.environ) with this interpreter's scripts folder first on PATH: `.venv/bin/mnist-mlp sweep`
    runs the venv's `dvc`, and its stages the venv's `python`, whatever the caller's PATH holds."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), *filter(None, [env.get("PATH")])])
    return env


def _dvc(root: Path, *args: str, env: Optional[dict] = None) -> None:
    env = with_own_scripts(env)
    # through a file, not a pipe: `dvc queue start` leaves daemon workers holding its output
    with tempfile.TemporaryFile("w+") as out:
        try:
            code = subprocess.run(["dvc", *args], cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT).returncode  # fmt: skip
        except FileNotFoundError:
            raise SweepError("`dvc` is not on PATH; run from the project's venv (make install)") from None
        out.seek(0)
        lines = out.read().strip().splitlines()
    if code:
        raise SweepError(f"`dvc {' '.join(args[:3])}` failed in {root}: {lines[-1] if lines else f'exit {code}'}")


def _queue(root: Path, read: str):
    """DVC's experiment queue, read through its Python API: `status` or `worker_status`."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return getattr(repo.experiments.celery_queue, read)()


def _queue_points(root: Path, points: list[tuple[str, list[str]]], force: bool = False) -> None:
    """`dvc exp run --queue -n <name> -S ...` for each point (the CLI: DVC applies -S to params.yaml in the cwd)."""
    for name, values in points:
        _dvc(root, "exp", "run", "--queue", "-n", name, *[part for value in values for part in ("-S", value)],
             *(["--force"] if force else []))  # fmt: skip


def sweep_base(root: Path, sweep: Sweep, from_workspace: bool = False) -> str:
    """`<HEAD commit>[+<key>...]`: the commit the runs start from and each params.yaml key they take
    from the workspace instead; refused unless `from_workspace`. A key the sweep sets itself is not taken."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        commit, changed = repo.scm.get_rev(), repo.params.diff().get("diff", {}).get("params.yaml", {})
    taken = {key: change for key, change in sorted(changed.items()) if key not in {*OWN_KEYS, *sweep.sets}}
    described = ", ".join(f"{key} ({change['old']} -> {change['new']})" for key, change in taken.items())
    if taken and not from_workspace:
        raise SweepError(f"params.yaml differs from HEAD ({commit[:7]}) in {described}; every queued experiment would "
                         "start from it: commit it, restore it (`git checkout params.yaml`), or pass --from-workspace "
                         "to sweep from it on purpose")  # fmt: skip
    if taken:
        print(f"note: sweeping from the workspace: params.yaml differs from HEAD ({commit[:7]}) in {described}", flush=True)
    return "+".join([commit, *taken])


def queue_status(root: Path) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed}."""
    return {entry["name"]: entry["status"] for entry in _queue(root, "status")}


def used_names(root: Path) -> set[str]:
    """Experiment names DVC already holds: experiments of any commit, and its queue's entries."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        made = {name for entries in repo.experiments.ls(all_commits=True).values() for name, _ in entries if name}
    return made | set(queue_status(root))


def _await_earlier_workers(root: Path, patience_s: float = 30.0) -> None:
    """A live worker would run this sweep's experiments in its own environment (thread count);
    DVC stops an idle one about 10 s after its queue runs dry."""
    deadline = time.monotonic() + patience_s
    while (workers := len(_queue(root, "worker_status"))) and time.monotonic() < deadline:
        time.sleep(2)
    if workers:
        print(f"note: {workers} queue worker(s) already running keep their own environment (thread count); "
              "`dvc queue stop` first for a clean start", flush=True)  # fmt: skip


def wait(root: Path, names: list[str], restart: Callable[[], None], poll_s: float = 10.0,
         stall_s: float = 30.0, patience: int = 3) -> dict[str, str]:  # fmt: skip
    """Poll DVC's queue until every experiment in `names` is done; print each change. Workers can
    exit leaving experiments queued (seen after a `dvc queue stop`): after `stall_s` with none
    running, `restart` starts workers again, at most `patience` times in a row without progress."""
    started = idle_since = time.monotonic()
    last, restarts = {}, 0
    while True:
        states = queue_status(root)
        current = {name: states.get(name, "Missing") for name in names}
        done = sum(state in DONE for state in current.values())
        if done > sum(state in DONE for state in last.values()):
            restarts = 0  # progress
        for name, state in current.items():
            if state != last.get(name):
                print(f"[{done}/{len(names)} done, {time.monotonic() - started:.0f}s] {name}: {state}", flush=True)
        last, now = current, time.monotonic()
        if done == len(names):
            return current
        if "Running" in current.values():
            idle_since = now
        elif now - idle_since >= stall_s:
            queued = [name for name, state in current.items() if state not in DONE]
            if restarts == patience:
                raise SweepError(f"{len(queued)} experiment(s) still queued, and no worker ran them after {patience} "
                                 f"restarts: {', '.join(queued)}; see `dvc queue status`")  # fmt: skip
            print(f"note: no worker runs the {len(queued)} experiment(s) still queued; starting workers again", flush=True)
            restart()
            restarts, idle_since = restarts + 1, now
        time.sleep(poll_s)


def summary(root: Path, names: list[str], base_commit: str = "HEAD"):
    """The sweep's experiments as `dvc exp show` has them: state, grid params, metrics, MLflow run id.

    Shown from the commit they were queued on: HEAD may have moved on while they ran (`dvc exp show` alone
    then lists none of them)."""
    import dvc.api
    import pandas as pd

    shown = dvc.api.exp_show(repo=str(root), revs=[base_commit])
    rows = {row["Experiment"]: row for row in shown if row.get("Experiment") in names}
    table = pd.DataFrame([rows[name] for name in names if name in rows], columns=["Experiment", *SUMMARY])
    return table.set_index("Experiment").astype({"train.seed": "Int64"}).dropna(axis="columns", how="all")


def run_sweep(root: Path, sweep: Sweep, experiment: str, jobs: int = 2, force: bool = False,
              from_workspace: bool = False, poll_s: float = 10.0):  # fmt: skip
    """Queue the grid, run it on `jobs` workers, wait, print the summary; a failed experiment raises."""
    from mnist_mlp.tracking import location
    from mnist_mlp.tracking import store

    base = sweep_base(root, sweep, from_workspace)
    if taken := sorted(set(sweep.names) & used_names(root)):  # the wait would follow those, not this sweep's
        raise SweepError(f"--sweep-id {sweep.sweep_id}: DVC already has experiments named {', '.join(taken)}; "
                         f"choose another --sweep-id, or remove them first: dvc exp remove {' '.join(taken)}")
    experiment_id = store.ensure_experiment(experiment, root)
    threads, uri = threads_per_worker(jobs), location.tracking_uri(root)
    part, parts = sweep.shard
    share = f", shard {part}/{parts}: {len(sweep.names)} of {sweep.size}" if parts > 1 else f": {len(sweep.names)}"
    # train.threads sets each run's torch threads; the environment's share holds for train.threads=0 and for numpy
    print(f"sweep {sweep.sweep_id}{share} experiments on {jobs} worker(s), each training on train.threads threads "
          f"({threads} where train.threads is 0); MLflow store {uri}, experiment '{experiment}' (id {experiment_id})", flush=True)
    if parts > 1 and not uri.startswith(("http://", "https://")):
        print(f"note: shard {part}/{parts} logs to this machine's own store; for the whole grid in one place, "
              "set MLFLOW_TRACKING_URI to one tracking server on every machine", flush=True)  # fmt: skip
    _await_earlier_workers(root)
    if parts == 1:
        args = ["exp", "run", "--queue", "-n", sweep.sweep_id, *sweep.overrides(base), *(["--force"] if force else [])]
        _dvc(root, *args)
        print(f"queued {', '.join(sweep.names)}: dvc {shlex.join(args)}", flush=True)
    else:  # a part of a product is no product: each point of the shard is queued on its own, under its grid name
        _queue_points(root, sweep.points(base), force)
        print(f"queued {', '.join(sweep.names)}: `dvc exp run --queue -n <name>` per point of shard {part}/{parts}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = lambda: _dvc(root, "queue", "start", "-j", str(jobs), env=env)  # noqa: E731
    start()
    outcome = wait(root, sweep.names, start, poll_s)
    table = summary(root, sweep.names, base.split("+")[0])
    print(f"sweep {sweep.sweep_id} done; dvc exp show for its experiments:\n{table.to_string()}", flush=True)
    failed = [name for name, state in outcome.items() if state != "Success"]
    if failed:
        raise SweepError(f"{len(failed)} of {len(outcome)} experiments failed: {', '.join(failed)}; "
                         f"read why with `dvc queue logs {failed[0]}`")  # fmt: skip
