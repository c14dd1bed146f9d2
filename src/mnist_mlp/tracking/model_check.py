"""What an MLflow model of this project looks like, checked before MLflow is handed it.

Anyone who can log a run to a shared store can put a crafted model there. MLflow 3.17's
loaders put a model's `code/` folder on sys.path and import the module named in
`data/pickle_module_info.txt` (pytorch flavor) or its `loader_module` (python_function) before
they check whether unpickling is allowed, so refusing pickles there is not a check. This
module reads only files (YAML with the safe loader, directory listings) and accepts exactly
what `tracking.Run.log_model` writes: the pytorch + python_function flavors with MLflow's own
loader, no code paths, a `data/model.pt2` torch.export archive and MLflow's metadata files.
MLflow then checks the archive itself for pickle records (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mnist_mlp.errors import UserError

# the files `mlflow.pytorch.log_model(..., serialization_format="pt2")` writes, and nothing else
TOP_FILES = {
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "input_example.json",
    "serving_input_example.json",
    "registered_model_meta",
}
DATA_FILES = {"model.pt2"}
FLAVORS = {"pytorch", "python_function"}
LOADER_MODULE = "mlflow.pytorch"
# the keys each flavor may hold, with the only values allowed where it matters
PYTORCH_KEYS = {"code": None, "model_data": "data", "pytorch_version": ..., "serialization_format": "pt2"}
PYFUNC_KEYS = {
    "loader_module": LOADER_MODULE,
    "data": "data",
    "code": None,
    "env": ...,
    "config": ...,
    "python_version": ...,
    "pickle_module_name": "mlflow.pytorch.pickle_module",
}


class ModelCheckError(UserError, ValueError):
    """An MLflow model this project did not write; refused before anything of it is imported or unpickled."""


def _check_keys(flavor: str, conf: object, allowed: dict) -> None:
    if not isinstance(conf, dict):
        raise ValueError(f"flavor {flavor!r} is not a mapping")
    for key, value in conf.items():
        if key not in allowed:
            raise ValueError(f"flavor {flavor!r} has key {key!r}; allowed: {', '.join(allowed)}")
        expected = allowed[key]
        if expected is not ... and value != expected:
            raise ValueError(f"flavor {flavor!r} has {key}: {value!r}; expected {expected!r}")


def check_files(folder: Path) -> None:
    """Every entry a plain file (no links) among the expected names; `data/` holds only the pt2 archive."""
    for entry in sorted(folder.rglob("*")):
        relative = entry.relative_to(folder).as_posix()
        if entry.is_symlink():
            raise ValueError(f"{relative} is a symbolic link")
        if entry.is_dir():
            if relative != "data":
                raise ValueError(f"unexpected folder {relative}/ (a model of this project has only data/)")
        elif not entry.is_file():
            raise ValueError(f"{relative} is not a regular file")
        elif relative.startswith("data/"):
            if relative.removeprefix("data/") not in DATA_FILES:
                raise ValueError(f"unexpected file {relative} (data/ holds only {', '.join(sorted(DATA_FILES))})")
        elif relative not in TOP_FILES:
            raise ValueError(f"unexpected file {relative}")
    for required in ("MLmodel", "data/model.pt2"):
        if not (folder / required).is_file():
            raise ValueError(f"no {required} (not a pt2 model logged by this project)")


def check_mlmodel(folder: Path) -> None:
    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"MLmodel is not valid YAML ({type(exc).__name__})") from None
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != FLAVORS:
        found = ", ".join(sorted(flavors)) if isinstance(flavors, dict) else "none"
        raise ValueError(f"flavors {found}; expected exactly {', '.join(sorted(FLAVORS))}")
    _check_keys("pytorch", flavors["pytorch"], PYTORCH_KEYS)
    _check_keys("python_function", flavors["python_function"], PYFUNC_KEYS)


def verify_model_folder(folder: str | Path, uri: str) -> None:
    """Raise ModelCheckError naming `uri` and the reason unless `folder` is a model this project logged."""
    try:
        check_files(Path(folder))
        check_mlmodel(Path(folder))
    except ValueError as exc:
        raise ModelCheckError(
            f"{uri}: refused: not a model this project logged ({exc}); nothing of it was loaded"
        ) from None
