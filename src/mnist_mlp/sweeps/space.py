"""A search space file (params/search/default.yaml): which params a TPE search draws, over what ranges, for how many trials.

    trials: 12             # trials in the study, over every worker
    startup_trials: 4      # random trials before TPE models the results (Optuna's n_startup_trials)
    space:
      train.lr: {float: [0.001, 0.03], log: true}
      train.weight_decay: {float: [0.0, 0.2]}
      train.epochs: {int: [1, 3]}
      train.hidden_sizes: {choice: [[256, 256], [512, 512]]}

Every bound and choice is checked against the params schema before a study is made, naming the key.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mnist_mlp.errors import UserError
from mnist_mlp.files import read_yaml
from mnist_mlp.params import PER_RUN_KEYS, ParamsError, validate_dotted


class SpaceError(UserError, ValueError):
    """A search space file that cannot define a study."""


class Dimension(BaseModel):
    """One param's range: exactly one of float, int (each [low, high], both included) or choice."""

    model_config = ConfigDict(extra="forbid")
    # the file's own words; builtins.*: inside this class, `float` and `int` name the fields
    float: tuple[builtins.float, builtins.float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None
    choice: list[Any] | None = Field(default=None, min_length=2)
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [kind for kind in ("float", "int", "choice") if getattr(self, kind) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"give exactly one of float: [low, high], int: [low, high], choice: [...] (got {kinds or 'none'})"
            )
        bounds = self.float or self.int
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"low {bounds[0]} must be below high {bounds[1]}")
        if self.log and not (bounds and bounds[0] > 0):
            raise ValueError("log: true needs a numeric range with low > 0")
        return self

    @property
    def values(self) -> list[Any]:
        """The values to check against the params schema: both bounds, or every choice."""
        return list(self.float or self.int or self.choice)


class Space(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int = Field(ge=1, le=10_000)
    startup_trials: int = Field(default=10, ge=0)
    space: dict[str, Dimension] = Field(min_length=1)

    def suggest(self, trial) -> dict[str, Any]:
        """The trial's value of each param; a choice goes to Optuna as JSON text (it takes no lists)."""
        drawn = {}
        for key, dimension in self.space.items():
            if dimension.float:
                drawn[key] = trial.suggest_float(key, *dimension.float, log=dimension.log)
            elif dimension.int:
                drawn[key] = trial.suggest_int(key, *dimension.int, log=dimension.log)
            else:
                drawn[key] = json.loads(
                    trial.suggest_categorical(key, [json.dumps(value) for value in dimension.choice])
                )
        return drawn


def parse(data: Any, source: str, fixed: set[str] = frozenset()) -> Space:
    """A validated search space from the file's mapping; `fixed`: keys the sweep sets itself (refused here)."""
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SpaceError(f"{source}: {where}: {error['msg']}") from None
    for key, dimension in space.space.items():
        if key in fixed or key in PER_RUN_KEYS:
            raise SpaceError(f"{source}: space.{key}: a search cannot draw {key}; it is set per run or by the sweep")
        for value in dimension.values:
            try:
                validate_dotted({key: value}, source=f"{source}: space.{key}")
            except ParamsError as exc:
                raise SpaceError(str(exc)) from None
    return space


def read(path: Path, fixed: set[str] = frozenset()) -> Space:
    if not Path(path).is_file():
        raise SpaceError(f"{path}: no such search space file; see params/search/default.yaml")
    return parse(read_yaml(path, SpaceError, "search space file"), str(path), fixed)
