"""models/model.pt: weights, resolved params and normalization, readable without unpickling code.

Its bytes are a function of the params, the data, the code and the thread count alone, so that DVC's
content hashes mean "the same model": what differs per run (the MLflow run id, the seconds it took)
is in the training record beside it (reports/training_run.json), never in the model file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnist_mlp import files
from mnist_mlp.core.model import MLP, PixelClassifier
from mnist_mlp.data.mnist import Normalization, load_error_reason
from mnist_mlp.errors import UserError

FORMAT_VERSION = 1


class CheckpointError(UserError, ValueError):
    """A model file that cannot be loaded; the message names the file and why."""


@dataclass
class Checkpoint:
    model: MLP
    normalization: Normalization
    params: dict[str, Any]  # the resolved params.yaml, every section
    info: dict[str, Any]  # best epoch, best val accuracy, epochs, device: nothing that differs per run

    def classifier(self) -> PixelClassifier:
        """Pixels in [0, 1] -> probabilities, with this checkpoint's own normalization."""
        return PixelClassifier(self.model, self.normalization.mean, self.normalization.std).eval()


def save_checkpoint(path: str | Path, model: MLP, normalization: Normalization, params: dict, info: dict) -> None:
    files.save_torch(
        path,
        {
            "format_version": FORMAT_VERSION,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "architecture": {
                "hidden_sizes": list(model.hidden_sizes),
                "activation": model.activation,
                "dropout": float(model.dropout),
            },
            "normalization": normalization.as_dict(),
            "params": params,
            "info": info,
        },
    )


# reports/training_run.json: what the train stage's run was, for the evaluate stage to log into
# made_by: the device, CPU kind and versions that made the model (core.machine.made_by)
TRAINING_RECORD_KEYS = {"mlflow_run_id": str, "train_seconds": (int, float), "made_by": dict}


def write_training_record(path: str | Path, run_id: str, train_seconds: float, made_by: dict[str, str]) -> None:
    files.write_json(path, {"mlflow_run_id": run_id, "train_seconds": round(train_seconds, 3), "made_by": made_by})


def read_training_record(path: str | Path) -> dict[str, Any]:
    """The train stage's record of its run: {mlflow_run_id, train_seconds, made_by}; one clear line when it is not one."""
    path = Path(path)
    expected = "expected the train stage's record ({" + ", ".join(TRAINING_RECORD_KEYS) + "}); run `dvc repro train`"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({type(exc).__name__}); {expected}") from None
    if not isinstance(record, dict) or any(
        not isinstance(record.get(key), kind) or isinstance(record.get(key), bool)
        for key, kind in TRAINING_RECORD_KEYS.items()
    ):
        raise CheckpointError(f"{path}: {expected}")
    return {key: record[key] for key in TRAINING_RECORD_KEYS}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load with `weights_only=True`: a file that would run code on unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found; run `dvc repro` to train one")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError and friends
        raise CheckpointError(
            f"{path}: refused to load: not a plain-tensor checkpoint ({load_error_reason(exc)}); "
            "expected a models/model.pt written by the train stage"
        ) from None
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a mnist-mlp checkpoint (format_version {FORMAT_VERSION} expected)")
    arch = blob["architecture"]
    model = MLP(arch["hidden_sizes"], arch["activation"], arch["dropout"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        # torch lists every mismatch on its own line; the first one says enough on one line
        details = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = details[1] if len(details) > 1 else details[0] if details else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not fit the recorded architecture {arch}: {reason}") from None
    model.eval()
    norm = Normalization(**blob["normalization"])
    return Checkpoint(model=model, normalization=norm, params=blob["params"], info=blob["info"])
