"""A model read from a shared MLflow store runs nothing of its own: crafted models are refused before
anything of theirs is imported or unpickled, through every way this project loads one."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from mnist_mlp.core.model import PixelClassifier
from mnist_mlp.serving import app, predict
from mnist_mlp.tracking import loading, model_check, runs, store
from support.app import NORMALIZATION, save_model, train_mlp
from support.cli import cli_in_process

REFUSED = "refused: not a model this project logged"
KINDS = [
    "pickle-module",
    "loader-module",
    "pickle-module-file",
    "extra-file",
    "extra-folder",
    "other-flavor",
    "symlink",
    "pickle-format",
]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory, empty_mlflow_db) -> Path:
    """A model folder exactly as the evaluate stage logs one (runs.Run.log_model), downloaded."""
    import mlflow

    folder = tmp_path_factory.mktemp("genuine")
    shutil.copy(empty_mlflow_db, folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        experiment_id = store.ensure_experiment("genuine", root=folder)
        with mlflow.start_run(experiment_id=experiment_id):
            classifier = PixelClassifier(train_mlp(), NORMALIZATION.mean, NORMALIZATION.std).eval()
            uri = runs.Run("unused").log_model(classifier, torch.rand(2, 784).numpy())
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(folder / "download")))
    mlflow.set_tracking_uri(None)
    return local


def _evil_module(folder: Path, marker: Path) -> str:
    """code/<name>.py that creates `marker` when imported: an attacker's code."""
    name = f"evil_{uuid.uuid4().hex}"
    (folder / "code").mkdir(exist_ok=True)
    (folder / "code" / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return name


def _edit_mlmodel(folder: Path, change) -> None:
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    change(meta["flavors"])
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))


def craft(genuine: Path, dest: Path, kind: str, marker: Path) -> Path:
    """A copy of a genuine model changed as an attacker (or a careless colleague) would."""
    folder = shutil.copytree(genuine, dest)
    if (
        kind == "pickle-module"
    ):  # MLflow imports this module to unpickle model.pth, before it checks pickles are allowed
        name = _evil_module(folder, marker)
        (folder / "data" / "pickle_module_info.txt").write_text(name)
        (folder / "data" / "model.pth").write_bytes(b"not a model")
        _edit_mlmodel(folder, lambda flavors: flavors["pytorch"].update(code="code"))
    elif kind == "loader-module":  # python_function's loader: `mlflow models serve` imports it
        name = _evil_module(folder, marker)
        _edit_mlmodel(folder, lambda flavors: flavors["python_function"].update(loader_module=name, code="code"))
    elif kind == "pickle-module-file":
        (folder / "data" / "pickle_module_info.txt").write_text("os")
    elif kind == "extra-file":
        (folder / "notes.txt").write_text("hello")
    elif kind == "extra-folder":
        (folder / "code").mkdir()
    elif kind == "other-flavor":
        _edit_mlmodel(folder, lambda flavors: flavors.update(sklearn={"pickled_model": "model.pkl"}))
    elif kind == "symlink":
        (folder / "data" / "model.pt2").unlink()
        (folder / "data" / "model.pt2").symlink_to(genuine / "data" / "model.pt2")
    elif kind == "pickle-format":
        shutil.rmtree(folder)
        import mlflow

        mlflow.pytorch.save_model(
            PixelClassifier(train_mlp(), 0.1, 0.3),
            str(folder),
            serialization_format="pickle",
            pip_requirements=["torch"],
        )
    return folder


@pytest.mark.parametrize("loader", ["pytorch", "pyfunc"])
def test_the_crafted_models_would_run_code_through_mlflow_itself(genuine, tmp_path, loader, monkeypatch):
    """The premise: MLflow 3.17 runs the attacker's module even with unpickling disallowed. (3.18 no longer runs the
    pytorch flavour's: the project's own check refuses both whatever MLflow does.)"""
    import mlflow

    assert mlflow.__version__.startswith("3.17."), (
        "this premise describes MLflow 3.17, requirements/lock.txt's: re-check it"
    )

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    marker = tmp_path / "pwned"
    folder = craft(genuine, tmp_path / "model", "pickle-module" if loader == "pytorch" else "loader-module", marker)
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises on the crafted folder; the marker is the point
        (mlflow.pytorch if loader == "pytorch" else mlflow.pyfunc).load_model(str(folder))
    assert marker.exists()


def test_the_genuine_model_passes_the_check_and_loads(genuine):
    model_check.verify_model_folder(genuine, "genuine")
    classifier = predict.load_classifier(str(genuine))  # checks one row of pixels gives ten probabilities
    assert classifier(torch.rand(3, 784)).shape == (3, 10)


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", KINDS)
def test_predict_refuses_a_crafted_model_folder_and_runs_nothing(genuine, tmp_path, kind, capsys):
    marker = tmp_path / "pwned"
    folder = craft(genuine, tmp_path / "model", kind, marker)
    capsys.readouterr()  # MLflow's warnings while crafting
    code, out, err = cli_in_process(["predict", "--model", str(folder), "x.png"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith(f"mnist-mlp predict: error: {folder}: {REFUSED} (") and len(err.splitlines()) == 1
    assert not marker.exists()


@pytest.fixture
def crafted_run(genuine, tmp_path, mlflow_store):
    """A FINISHED run of sweep `evil` in the store whose `model` artifact is the pickle-module exploit."""
    import mlflow

    marker = tmp_path / "pwned"
    folder = craft(genuine, tmp_path / "crafted", "pickle-module", marker)
    experiment_id = store.ensure_experiment("mnist-mlp", root=tmp_path)
    with mlflow.start_run(experiment_id=experiment_id, run_name="evil-relu", tags={"sweep_id": "evil"}) as run:
        mlflow.log_params({"activation": "relu", "dropout": "0.0"})
        mlflow.log_artifacts(str(folder), artifact_path="model")
    return run.info.run_id, marker


@pytest.mark.bad_input
def test_a_runs_uri_to_a_crafted_model_is_refused_by_predict_and_serve(crafted_run, capsys):
    run_id, marker = crafted_run
    uri = f"runs:/{run_id}/model"
    for argv in (["predict", "--model", uri, "x.png"], ["serve", "--model-uri", uri, "--port", "5999"]):
        code, out, err = cli_in_process(argv, capsys)
        assert code == 1 and f"error: {uri}: {REFUSED}" in err and len(err.splitlines()) == 1, err
    assert not marker.exists()


@pytest.mark.bad_input
def test_a_registered_crafted_model_is_refused_through_models_uri(crafted_run, capsys):
    import mlflow

    run_id, marker = crafted_run
    mlflow.register_model(f"runs:/{run_id}/model", "crafted")
    with pytest.raises(model_check.ModelCheckError, match=REFUSED):
        loading.load_pixel_classifier("models:/crafted/1")
    assert not marker.exists()


@pytest.mark.bad_input
def test_the_app_refuses_a_crafted_sweep_model_at_start_and_by_sweep_id(crafted_run, tmp_path):
    _, marker = crafted_run
    checkpoint = save_model(tmp_path / "models" / "model.pt")
    lineup = app.Models(str(checkpoint)).lineup()  # start-up: the latest sweep, which is the crafted one
    assert lineup.sweep_id == "evil" and REFUSED in lineup.entries[1].error
    client = app.create_app(app.Models(str(checkpoint))).test_client()
    answer = client.get("/api/models?sweep=evil").get_json()
    assert [model.get("error", "") for model in answer["models"]][1].find(REFUSED) >= 0
    assert answer["models"][0].get("error") is None  # the current model still answers
    assert not marker.exists()
