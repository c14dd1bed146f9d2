"""What a study runs: its Definition (a grid or a TPE search space, the `--set` values, the base commit), kept in
the study storage as a user attribute and checked as untrusted input whenever a worker reads it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from mnist_mlp.params import SWEEP_KEYS, ParamsError, override_text, validate_dotted
from mnist_mlp.sweeps import space as search_space
from mnist_mlp.sweeps.plan import GRID, Sweep, SweepError, check_size, parse_set

DEFINITION = "mnist_mlp.definition"  # the study's user attribute holding its Definition


class StudyError(SweepError):
    """A study that cannot be made, joined or run."""


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


def check_definition(name: str, definition: Definition) -> None:
    """A definition read from a shared storage is untrusted: every key and value goes through the checks a
    command line's do (`--set` items as `plan.plan` parses them, the grid and space against the params schema)
    before any of it reaches `dvc exp run -S`, where a `file:key=...` item could rewrite another file."""
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
        validate_dotted({"tracking.sweep_base": definition.base, "tracking.experiment": definition.experiment}, where)
        for key, values in definition.grid.items():
            for value in values:
                validate_dotted({key: value}, where)
        # together, as `plan` checks a command line's: one key's range can depend on another's (elastic_sigma)
        validate_dotted(dict(parse_set(f"{key}={value}") for key, value in definition.sets.items()), where)
        if definition.kind == "search":
            search_space.parse(definition.space, where, fixed={*definition.sets, *SWEEP_KEYS})
    except (SweepError, ParamsError, search_space.SpaceError, TypeError) as exc:
        raise StudyError(f"{where} is refused: {exc}") from None


def retried(trials: list) -> set[int]:
    """Numbers of the trials a heartbeat failed and the study enqueued again."""
    return {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}


def progress(definition: Definition, trials: list) -> tuple[int, int]:
    """(trials ended, of the study's size): COMPLETE ones, and those that failed for good."""
    again = retried(trials)
    ended = [
        t for t in trials if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in again)
    ]
    return len(ended), definition.size


def has_work(definition: Definition, trials: list) -> bool:
    """A WAITING trial (a grid point, a retry), or a search short of its trials."""
    if any(trial.state == TrialState.WAITING for trial in trials):
        return True
    if definition.kind != "search":
        return False
    live = [t for t in trials if t.number not in retried(trials) and t.state != TrialState.PRUNED]
    return len(live) < definition.size


def describe(values: dict) -> str:
    return ", ".join(
        f"{key.split('.')[-1]}={value:.4g}" if isinstance(value, float) else f"{key.split('.')[-1]}={value}"
        for key, value in values.items()
    )
