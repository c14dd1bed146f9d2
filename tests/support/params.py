"""Params for tests: the schema's defaults made tiny (small and fast, but the same code paths)."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_PARAMS = {
    "preprocess": {"val_size": 100},
    "train": {"hidden_sizes": [32], "epochs": 2, "batch_size": 64, "lr": 0.01},
    "evaluate": {"gallery_size": 9},
}


def default_params() -> dict:
    """The defaults from the params schema: never the workspace's params.yaml, which an experiment may have changed."""
    from mnist_mlp.params import Params

    return Params().model_dump()


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` applied, nested sections merged key by key."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def set_train_params(project: Path, **train) -> None:
    """Change keys of the `train` section of `project`'s params.yaml, the rest as it is."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params(path: Path, **sections) -> Path:
    """params.yaml at `path`: the defaults, TINY_PARAMS, then `sections` (e.g. train={"epochs": 1})."""
    params = merge(default_params(), TINY_PARAMS)
    path.write_text(yaml.safe_dump(merge(params, sections), sort_keys=False))
    return path
