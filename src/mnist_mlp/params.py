"""Typed, validated pipeline parameters.

`params.yaml` is parsed once into `Params`; every unknown key, wrong type and
out-of-range value is reported with its dotted key and what is allowed, before
any stage does work.
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mnist_mlp.errors import UserError, redact
from mnist_mlp.files import read_yaml

Normalization = Literal["standardize", "max", "tutorial"]
Activation = Literal["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]
Loss = Literal["cross_entropy", "mse"]
Optimizer = Literal["sgd", "rmsprop", "adam", "adamw"]
Schedule = Literal["none", "cosine", "onecycle"]
Device = Literal["auto", "cpu", "cuda"]


MAX_SEED = 2**63 - 1  # torch's and numpy's generators take any int64
MAX_WIDTH = 16384  # 784-16384-16384-10 is 1.1 GB of fp32 weights and optimizer state: big, not absurd
MAX_LAYERS = 16  # the logged param stays far below MLflow's 6000-character limit
# weights and biases of the whole net: 300 M is 4.8 GB with AdamW's gradients and two moments (784-16384-16384-10 fits,
# 16 layers of 16,384 would ask 64 GB and meet the OOM killer without a word)
MAX_PARAMETERS = 300_000_000
MAX_EPOCHS = 1000  # the best preset trains 100; a billion would run for centuries, not fail
MAX_THREADS = 1024  # torch.set_num_threads takes any positive count; more than the cores only slows down


class ParamsError(UserError, ValueError):
    """A parameter file that cannot be used; the message names the key."""


# DVC resolves `-S` overrides through OmegaConf, which expands `${...}` (`${oc.env:SECRET}` reads the environment of
# whoever runs it): a value is data, never an expression, so no text value may hold the syntax.
INTERPOLATION = "${"


def no_interpolation(value: str | None) -> str | None:
    if value is not None and INTERPOLATION in value:
        raise ValueError(
            f"'{INTERPOLATION}...}}' is interpolation syntax, which DVC would expand; a value here is plain text"
        )
    return value


class _Section(BaseModel):
    # allow_inf_nan: `weight_decay: .inf` would train to NaN and the hint would blame lr
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


class DownloadParams(_Section):
    mirror: str | None = Field(
        default=None,
        description="folder or URL holding the four MNIST files; MNIST_MIRROR overrides it",
    )

    @field_validator("mirror")
    @classmethod
    def _no_interpolation(cls, mirror: str | None) -> str | None:
        return no_interpolation(mirror)

    @field_validator("mirror")
    @classmethod
    def _no_credentials(cls, mirror: str | None) -> str | None:
        # params.yaml is committed and copied into dvc.lock and the model file
        from urllib.parse import urlsplit

        if mirror and (urlsplit(mirror).password or urlsplit(mirror).username):
            raise ValueError("a URL with user:password must not be committed; put it in $MNIST_MIRROR instead")
        return mirror


class PreprocessParams(_Section):
    normalization: Normalization = "standardize"
    val_size: int = Field(default=5000, ge=1, le=59999)
    split_seed: int = Field(default=0, ge=0, le=MAX_SEED)


def _int_as_float(value: Any) -> Any:
    # YAML reads `lr: 1` as an int; strict mode would refuse it as a float.
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    try:
        return float(value)
    except OverflowError:  # pydantic reports a ValueError; an OverflowError would be a traceback
        raise ValueError("Input should be a finite number") from None


class AugmentParams(_Section):
    """Random deformations of each training batch (mnist_mlp.core.augment); all 0 = off."""

    shift: float = Field(default=0.0, ge=0.0, le=8.0, description="pixels, each axis, uniform in [-shift, shift]")
    rotation: float = Field(default=0.0, ge=0.0, le=90.0, description="degrees, uniform in [-rotation, rotation]")
    scale: float = Field(default=0.0, ge=0.0, le=0.5, description="each axis times 1 + uniform in [-scale, scale]")
    shear: float = Field(default=0.0, ge=0.0, le=45.0, description="degrees, uniform in [-shear, shear]")
    elastic_alpha: float = Field(default=0.0, ge=0.0, le=100.0, description="elastic displacement, pixels (0 = none)")
    elastic_sigma: float = Field(default=0.0, ge=0.0, le=10.0, description="smoothing of the elastic field, pixels")
    last_clean_epochs: int = Field(
        default=0, ge=0, description="the last N epochs train on undeformed digits, as tested"
    )

    @field_validator("shift", "rotation", "scale", "shear", "elastic_alpha", "elastic_sigma", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: Any) -> Any:
        return _int_as_float(value)

    @field_validator("elastic_sigma")
    @classmethod
    def _sigma_with_alpha(cls, sigma: float, info: ValidationInfo) -> float:
        if info.data.get("elastic_alpha", 0.0) > 0 and sigma <= 0:
            raise ValueError("must be > 0 when elastic_alpha is > 0 (unsmoothed noise is not a distortion)")
        return sigma


class TrainParams(_Section):
    # bounded: [100000, 100000] would ask for 40 GB and meet the OOM killer without a word
    hidden_sizes: list[int] = Field(default=[512, 512], min_length=1, max_length=MAX_LAYERS)
    activation: Activation = "relu"
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    loss: Loss = "cross_entropy"
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    optimizer: Optimizer = "adamw"
    lr: float = Field(default=0.002, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    schedule: Schedule = "onecycle"
    batch_size: int = Field(default=128, gt=0)
    epochs: int = Field(default=20, gt=0, le=MAX_EPOCHS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    device: Device = "auto"
    # CPU threads; 0 = torch's default (every core). Any count gives the same weights, bit for bit, under MKL's
    # strict mode (mnist_mlp.MKL_CBWR, tests/test_determinism.py): only the seconds differ
    threads: int = Field(default=0, ge=0, le=MAX_THREADS)
    augment: AugmentParams = AugmentParams()

    @field_validator("augment")
    @classmethod
    def _some_epochs_deformed(cls, augment: AugmentParams, info: ValidationInfo) -> AugmentParams:
        epochs = info.data.get("epochs")
        if augment.last_clean_epochs and epochs is not None and augment.last_clean_epochs >= epochs:
            raise ValueError(
                f"train.augment.last_clean_epochs ({augment.last_clean_epochs}) must be below train.epochs "
                f"({epochs}): no epoch would see a deformed digit"
            )
        return augment

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(not 0 < size <= MAX_WIDTH for size in sizes):
            raise ValueError(f"every hidden size must be a positive integer, at most {MAX_WIDTH}")
        widths = [784, *sizes, 10]
        count = sum((inputs + 1) * outputs for inputs, outputs in zip(widths, widths[1:]))
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"{count:,} weights and biases; at most {MAX_PARAMETERS:,} ({16 * MAX_PARAMETERS / 1e9:.1f} GB "
                "with AdamW's state)"
            )
        return sizes

    @field_validator("dropout", "label_smoothing", "lr", "momentum", "weight_decay", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: Any) -> Any:
        return _int_as_float(value)


class EvaluateParams(_Section):
    batch_size: int = Field(default=10000, gt=0)
    gallery_size: int = Field(default=36, ge=1, le=400)


class TrackingParams(_Section):
    # MLflow refuses names over 500 characters; no control characters in a name the UI shows
    experiment: str = Field(default="mnist-mlp", min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")
    # A param: it travels with a queued experiment whatever worker runs it, and a new id changes
    # the train stage's params, so the DVC run-cache cannot restore an earlier training and
    # leave the sweep without its MLflow run.
    sweep_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # set by `mnist-mlp sweep`: the commit its runs start from, plus each params.yaml key taken
    # from the uncommitted workspace (`--from-workspace`): `<sha>` or `<sha>+train.epochs+train.lr`
    sweep_base: str | None = Field(default=None, pattern=r"^[0-9a-f]{40}(\+[A-Za-z0-9_]+\.[A-Za-z0-9_]+)*$")
    # set by `mnist-mlp sweep`: the Optuna trial number of this run in the study named sweep_id
    trial: int | None = Field(default=None, ge=0)
    # the evaluate stage registers each model as a version of it; `mnist-mlp promote` moves its `champion` alias
    registered_model: str = Field(default="mnist-mlp", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

    @field_validator("experiment")
    @classmethod
    def _no_interpolation(cls, experiment: str) -> str:
        return no_interpolation(experiment)


class Params(_Section):
    download: DownloadParams = DownloadParams()
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()


def _model_at(location: tuple) -> type[BaseModel] | None:
    """The section model that owns the key at `location` (None past a leaf)."""
    model: type[BaseModel] | None = Params
    for part in location[:-1]:
        field = model.model_fields.get(part) if model else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _allowed(model: type[BaseModel] | None, key: str) -> str:
    if model is None or key not in model.model_fields:
        return ""
    field = model.model_fields[key]
    choices = get_args(field.annotation)
    if choices and all(isinstance(choice, str) for choice in choices):
        return "allowed: " + ", ".join(choices)
    bounds = []
    for meta in field.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                bounds.append(f"{symbol} {getattr(meta, name)}")
    return ("allowed: " + " and ".join(bounds)) if bounds else ""


_SHORT = reprlib.Repr()
_SHORT.maxlist = _SHORT.maxtuple = 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlevel = 3
MAX_GOT = 80  # characters of a bad value that a message repeats


def _short_repr(value: Any) -> str:
    """`value` as a message shows it: at most MAX_GOT characters, however big it is."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an int past Python's 4300-digit limit for str()
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= MAX_GOT else text[: MAX_GOT - 3] + "..."


def _describe(error: dict, source: str) -> str:
    location = tuple(str(part) for part in error["loc"])
    # list items come out as ('train', 'hidden_sizes', '0'): report the list's key
    while len(location) > 1 and location[-1].isdigit():
        location = location[:-1]
    key = ".".join(location)
    model = _model_at(location)
    if error["type"] == "extra_forbidden":
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(location[-1], known, n=1)
        hint = f"did you mean '{'.'.join(location[:-1] + (close[0],))}'? " if close else ""
        return f"{source}: unknown key '{key}'; {hint}known keys: {', '.join(known)}"
    allowed = _allowed(model, location[-1])
    got = error.get("input")
    if isinstance(got, str):
        got = redact(got)  # an error message must not repeat a password
    # capped: an alias bomb's value would take minutes and gigabytes to print in full
    got_text = f" (got {_short_repr(got)})" if not isinstance(got, dict) else ""
    message = error["msg"].removeprefix("Value error, ")
    return f"{source}: invalid '{key}'{got_text}: {message}" + (f"; {allowed}" if allowed else "")


def validate_params(raw: Any, source: str = "params") -> Params:
    """Turn a parsed mapping into `Params`, or raise ParamsError naming each bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(error, source) for error in exc.errors())) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; every problem names the file and the key."""
    return validate_params(read_yaml(path, ParamsError, "params file"), source=str(path))


def check_unchanged(path: str | Path, read: Params, *sections: str) -> None:
    """Refuse to finish a stage whose params changed under it: DVC records params.yaml as it is when
    the stage ends, so a second `dvc exp run -S ...` in the same workspace (refused by DVC's lock only
    after it wrote its values) would have dvc.lock claim params this run did not use."""

    now, then = dotted(load_params(path).model_dump()), dotted(read.model_dump())
    changed = [
        f"{key} {then[key]} -> {now[key]}" for key in then if key.split(".")[0] in sections and now[key] != then[key]
    ]
    if changed:
        raise ParamsError(
            f"{path} changed while this stage ran ({', '.join(changed)[:200]}): another `dvc exp run` "
            "or an editor wrote it; no output was replaced; run again when it is done"
        )


# --- what defines a run, and the presets: one home for both ---------------------------------------

# the sections a run's result depends on; download (where the bytes come from) and tracking do not change it
RESULT_SECTIONS = ("preprocess", "train", "evaluate")
# the keys a sweep sets on each of its runs
SWEEP_KEYS = ("tracking.sweep_id", "tracking.sweep_base", "tracking.trial")
# flatten()'s keys in which runs of one setting may differ: the seed (one sample), the device and thread count, where it is logged
PER_RUN_KEYS = frozenset(
    {"train.seed", "train.device", "train.threads", *(f"tracking.{key}" for key in TrackingParams.model_fields)}
)
PRESETS_FOLDER = "params"  # <project>/params/<name>.yaml


def preset_paths(root: str | Path) -> dict[str, Path]:
    """name -> file of every preset of the project at `root`, sorted by name."""
    return {path.stem: path for path in sorted((Path(root) / PRESETS_FOLDER).glob("*.yaml"))}


def preset_path(root: str | Path, name: str) -> Path:
    path = Path(root) / PRESETS_FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"{path}: no such preset; available: {', '.join(preset_paths(root)) or 'none'}")
    return path


def read_preset(path: str | Path) -> dict:
    """A preset (params/<name>.yaml): a validated partial params mapping."""
    overrides = read_yaml(path, ParamsError, "preset") or {}
    validate_params(overrides, source=str(path))
    return overrides


def apply_preset(base: Params, path: str | Path) -> Params:
    """`base` with a preset's keys laid over it, as `dvc exp run $(mnist-mlp preset NAME)` does."""

    def lay_over(tree: dict, values: dict) -> dict:  # nested sections (train.augment) key by key
        return {
            **tree,
            **{
                key: lay_over(tree.get(key) or {}, value) if isinstance(value, dict) else value
                for key, value in values.items()
            },
        }

    return validate_params(lay_over(base.model_dump(), read_preset(path)), source=str(path))


def preset_values(root: str | Path, name: str) -> dict[str, Any]:
    """{dotted key: value} for every key a run depends on (RESULT_SECTIONS): the defaults with the preset laid
    over them, plus the preset's own keys of other sections. Complete, so that a run of it never inherits what
    an earlier experiment left in params.yaml."""
    path = preset_path(root, name)
    resolved = dotted(apply_preset(Params(), path).model_dump())
    explicit = dotted(read_preset(path))
    keys = [key for key in resolved if key.split(".")[0] in RESULT_SECTIONS]
    keys += [key for key in explicit if key.split(".")[0] not in RESULT_SECTIONS]
    return {key: resolved[key] for key in keys}


# --- dotted keys and `-S` overrides: one home ------------------------------------------------------

MAX_OVERRIDE_LENGTH = 1000  # characters of one override: a path or a list of widths, never a payload


def dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"augment": {"shift": 2}}} -> {"train.augment.shift": 2}: the keys `dvc exp run -S` takes."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def nested(values: dict[str, Any]) -> dict:
    """{"train.augment.shift": 2} -> {"train": {"augment": {"shift": 2}}}: dotted's inverse."""
    tree: dict = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return tree


def validate_dotted(values: dict[str, Any], source: str) -> Params:
    """Check {dotted key: value} together against the schema (one key's range can depend on another's); a key
    without a section is reported as unknown."""
    return validate_params(nested(values), source=source)


def values_at(path: str | Path, keys: list[str]) -> dict[str, Any]:
    """{dotted key: value} of `keys` in a params file."""
    tree = read_yaml(path, ParamsError, "params file") or {}
    found = dotted(tree)
    if missing := [key for key in keys if key not in found]:
        raise ParamsError(f"{path}: no {', '.join(missing)}")
    return {key: found[key] for key in keys}


def override_text(key: str, value: object) -> str:
    """`key=value` as `dvc exp run -S` reads it (Hydra's grammar), with no space or quote, so that it also
    passes through the shell's word splitting in `dvc exp run $(mnist-mlp preset NAME)`."""
    import json

    import yaml

    # a list as compact JSON ([512,512], also YAML); `...` is YAML's end-of-document marker
    text = (
        json.dumps(value, separators=(",", ":"))
        if isinstance(value, list)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    )
    if any(char.isspace() or char in "'\"" for char in text):
        raise ParamsError(
            f"'{key}' = {text}: a value with spaces or quotes cannot pass through "
            "`$(mnist-mlp preset ...)`; give it with -S on the command line"
        )
    return f"{key}={text}"


def parse_override(item: str, option: str = "--set"):
    """One `key=value` as DVC reads `-S` (Hydra's grammar): (key, Hydra's override). Interpolation (`${...}`) is
    refused before Hydra sees it: DVC's OmegaConf would expand it with the environment of whoever runs it."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import HydraException

    if len(item) > MAX_OVERRIDE_LENGTH:
        raise ParamsError(f"{option} {item[:40]!r}...: {len(item):,} characters; at most {MAX_OVERRIDE_LENGTH:,}")
    if INTERPOLATION in item:
        raise ParamsError(
            f"{option} {item!r}: '{INTERPOLATION}...}}' is interpolation syntax, which DVC would expand; "
            "a value here is plain text"
        )
    try:
        (override,) = to_hydra_overrides([item])
    except HydraException:
        override = None
    if override is None or item.partition("=")[0] != override.key_or_group:
        raise ParamsError(f"{option} {item!r}: expected section.key=value, e.g. train.epochs=2")
    return override.key_or_group, override


def flatten(params: Params) -> dict[str, Any]:
    """One flat dict for tracking, keyed as params.yaml and `dvc exp run -S` are (train.dropout, preprocess.val_size)."""
    return {key: value for key, value in dotted(params.model_dump()).items() if not key.startswith("download.")}
