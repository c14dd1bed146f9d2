"""A sweep's plan: the activation x dropout (x seed) grid and its --set values, validated before a study is made.

sweeps/study.py runs it as an Optuna study, each point a `dvc exp run --temp` (tracking finds the store
through DVC_ROOT). Here: the grid, the `-S` texts DVC reads (Hydra's grammar), a safe base (each run records
its commit, and any params.yaml key it takes from the workspace, in tracking.sweep_base), a share of the
cores per worker.
"""

from __future__ import annotations

import math
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mnist_mlp.errors import UserError
from mnist_mlp.params import SWEEP_KEYS, override_text, parse_override, validate_dotted

GRID = {"train.activation": "--activations", "train.dropout": "--dropouts", "train.seed": "--seeds"}
OWN_KEYS = {*GRID, *SWEEP_KEYS}
MAX_GRID_POINTS = 1000  # a 3 x 3 x 3 grid is 27; a million points would fill the storage, not the CPU
DEFAULT_AXES = {"train.activation": ["relu", "tanh", "sigmoid"], "train.dropout": [0.0, 0.2, 0.5]}


class SweepError(UserError, RuntimeError):
    """A sweep that cannot be planned or run, or whose trials failed."""


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    grid: dict[str, list]  # param -> its values
    sets: dict[str, str]  # --set param -> its value as typed (DVC reads it with Hydra's grammar)
    experiment: str | None = None  # tracking.experiment, when --set gives it

    @property
    def size(self) -> int:
        return math.prod(len(values) for values in self.grid.values())


def parse_set(item: str):
    """One --set item as DVC reads `-S`: (key, value); the sweep's own keys and sweeps of values refused."""
    key, override = parse_override(item, "--set")
    if key in OWN_KEYS:
        raise SweepError(f"--set {item!r}: {key} is set by the sweep itself; use its own option")
    if override.is_sweep_override():
        raise SweepError(f"--set {item!r}: one value per key; the grid's axes are {', '.join(GRID.values())}")
    return key, override.value()


def plan(
    activations: Sequence[str] = (),
    dropouts: Sequence[float] = (),
    seeds: Sequence[int] = (),
    sets: Sequence[str] = (),
    sweep_id: str | None = None,
    preset: dict | None = None,
) -> Sweep:
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
    sweep_id = sweep_id or f"{datetime.now():%Y%m%d-%H%M%S}"
    axes = zip(GRID, (activations, [float(dropout) for dropout in dropouts], seeds))
    grid = {key: list(dict.fromkeys(values)) for key, values in axes if values}
    check_size(grid)
    for key, values in {**grid, "tracking.sweep_id": [sweep_id]}.items():
        for value in values:
            validate_dotted({key: value}, GRID.get(key, "--study"))
    parsed = dict(map(parse_set, sets))
    validate_dotted(parsed, "--set")
    raw = dict(item.split("=", 1) for item in sets)
    return Sweep(sweep_id, grid, raw, parsed.get("tracking.experiment"))


def check_size(grid: dict[str, list]) -> None:
    """A grid of at most MAX_GRID_POINTS points."""
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_GRID_POINTS:
        raise SweepError(f"a grid of {points:,} points; at most {MAX_GRID_POINTS:,}")


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def with_own_scripts(env: dict | None = None) -> dict:
    """`env` (default os.environ) with this interpreter's scripts folder first on PATH: `.venv/bin/mnist-mlp sweep`
    runs the venv's `dvc`, and its stages the venv's `python`, whatever the caller's PATH holds."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), *filter(None, [env.get("PATH")])])
    return env


def sweep_base(root: Path, set_keys: Sequence[str] = (), from_workspace: bool = False) -> str:
    """`<HEAD commit>[+<key>...]`: the commit the runs start from and each params.yaml key they take
    from the workspace instead; refused unless `from_workspace`. A key the sweep sets itself (`set_keys`,
    its own keys) is not taken."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        commit, changed = repo.scm.get_rev(), repo.params.diff().get("diff", {}).get("params.yaml", {})
    taken = {key: change for key, change in sorted(changed.items()) if key not in {*OWN_KEYS, *set_keys}}
    described = ", ".join(f"{key} ({change['old']} -> {change['new']})" for key, change in taken.items())
    if taken and not from_workspace:
        raise SweepError(
            f"params.yaml differs from HEAD ({commit[:7]}) in {described}; every trial would "
            "start from it: commit it, restore it (`git checkout params.yaml`), or pass --from-workspace "
            "to sweep from it on purpose"
        )
    if taken:
        print(
            f"note: sweeping from the workspace: params.yaml differs from HEAD ({commit[:7]}) in {described}",
            flush=True,
        )
    return "+".join([commit, *taken])
