"""`mnist-mlp predict`: MNIST-style preprocessing of people's images, the model, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from mnist_mlp.errors import UserError
from mnist_mlp.serving import predict
from mnist_mlp.serving.predict import ImageError, ModelError, image_pixels, mnist_pixels
from mnist_mlp.tracking import runs, store
from support.cli import cli_in_process, run
from support.digit_images import STYLES, glyph, picture, save_picture, train_font_model, write_styled_digits
from support.paths import BIN


def gray(image: Image.Image) -> np.ndarray:
    return predict.grayscale(image)


@pytest.fixture(scope="module")
def font_model(tmp_path_factory) -> Path:
    return train_font_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def styled_digits(tmp_path_factory) -> dict[Path, int]:
    return write_styled_digits(tmp_path_factory.mktemp("digits"))


# --- preprocessing -------------------------------------------------------------------


def test_dark_on_light_is_inverted_to_the_light_on_dark_of_mnist():
    dark_on_light = mnist_pixels(gray(picture(4, "black-on-white")))
    light_on_dark = 1.0 - gray(picture(4, "black-on-white"))
    assert dark_on_light.dtype == np.float32 and dark_on_light.shape == (28, 28)
    assert dark_on_light.max() == pytest.approx(1.0)
    assert dark_on_light[:3].max() == 0 and dark_on_light[:, :3].max() == 0  # black margins, as in MNIST
    np.testing.assert_allclose(dark_on_light, mnist_pixels(light_on_dark), atol=1e-6)


@pytest.mark.parametrize(("height", "width", "rows", "cols"), [(300, 60, 20, 4), (40, 160, 5, 20)])
def test_the_bounding_box_is_scaled_so_its_longer_side_is_20(height, width, rows, cols):
    page = np.ones((900, 700), dtype=np.float32)
    page[500 : 500 + height, 100 : 100 + width] = 0.0  # a dark bar far from the center
    digit = mnist_pixels(page)
    ink_rows, ink_cols = np.nonzero(digit.any(axis=1))[0], np.nonzero(digit.any(axis=0))[0]
    assert len(ink_rows) == rows and len(ink_cols) == cols


def test_a_speck_of_dust_does_not_stretch_the_bounding_box():
    page = np.array(gray(picture(7, "off-center-large")))
    clean = mnist_pixels(page)
    page[20:24, 20:24] = 0.0  # a dot in the far corner
    np.testing.assert_allclose(mnist_pixels(page), clean, atol=0.02)  # only the ink contrast changed


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("digit", [1, 4, 7])
def test_the_center_of_mass_lands_at_14_14(style, digit):
    row, col = ndimage.center_of_mass(mnist_pixels(gray(picture(digit, style))))
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_every_style_of_one_digit_gives_nearly_the_same_mnist_digit(tmp_path):
    reference = image_pixels(save_picture(picture(5, "black-on-white"), tmp_path / "reference.png"))
    for style, spec in STYLES.items():
        path = save_picture(picture(5, style), tmp_path / f"5-{style}", spec[-1])
        assert np.corrcoef(image_pixels(path), reference)[0, 1] > 0.9, style


def test_a_transparent_png_is_read_against_a_contrasting_backdrop(tmp_path):
    mask = glyph(3, 100, stroke=4)
    for ink in ((0, 0, 0), (255, 255, 255)):  # black and white ink on transparency
        layer = Image.new("RGBA", mask.size, (*ink, 0))
        layer.putalpha(mask)
        path = save_picture(layer, tmp_path / f"3-{ink[0]}.png")
        expected = mnist_pixels(np.asarray(mask, dtype=np.float32) / 255)
        assert np.corrcoef(image_pixels(path), expected.reshape(-1))[0, 1] > 0.99


@pytest.mark.parametrize("level", [0, 128, 255])
def test_a_blank_image_is_refused(tmp_path, level):
    noisy = np.clip(level + np.random.default_rng(0).integers(-8, 9, size=(300, 300)), 0, 255).astype(np.uint8)
    path = save_picture(Image.fromarray(noisy), tmp_path / "blank.jpg", "JPEG")
    with pytest.raises(ImageError, match=r"blank\.jpg: no digit found"):
        image_pixels(path)


# --- prediction ------------------------------------------------------------------------


def test_rendered_digits_in_every_style_are_read_correctly(font_model, styled_digits, capsys):
    code, out, err = cli_in_process(["predict", "--model", str(font_model), *map(str, styled_digits)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(styled_digits)
    for line, (path, digit) in zip(lines, styled_digits.items()):
        assert line.startswith(f"{path}: {digit}  ({digit} "), line


def test_probabilities_use_the_checkpoints_own_normalization(font_model, styled_digits, capsys):
    from mnist_mlp.core.checkpoint import load_checkpoint

    files = list(styled_digits)[:10]
    code, out, _ = cli_in_process(
        ["predict", "--json", "--top-k", "10", "--model", str(font_model), *map(str, files)], capsys
    )
    assert code == 0
    checkpoint = load_checkpoint(font_model)
    assert (checkpoint.normalization.mean, checkpoint.normalization.std) == (0.13, 0.31)
    pixels = torch.from_numpy(np.stack([image_pixels(path) for path in files]))
    for raw, (mean, std), should_match in ((pixels, (0.13, 0.31), True), (pixels, (0.0, 1.0), False)):
        expected = torch.softmax(checkpoint.model((raw - mean) / std), dim=1).detach().numpy()
        got = np.zeros_like(expected)
        for row, result in enumerate(json.loads(out)["predictions"]):
            for entry in result["top_k"]:
                got[row, entry["label"]] = entry["probability"]
        assert np.allclose(got, expected, atol=1e-5) == should_match


def test_json_output_has_one_entry_per_file_with_ranked_top_k(font_model, styled_digits, capsys):
    files = list(styled_digits)[:3]
    code, out, _ = cli_in_process(
        ["predict", "--json", "--top-k", "4", "--model", str(font_model), *map(str, files)], capsys
    )
    assert code == 0
    document = json.loads(out)
    assert document["model"] == str(font_model)
    assert [entry["file"] for entry in document["predictions"]] == list(map(str, files))
    for entry in document["predictions"]:
        assert set(entry) == {"file", "label", "top_k"}
        probabilities = [item["probability"] for item in entry["top_k"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert entry["label"] == entry["top_k"][0]["label"] and 0 < sum(probabilities) <= 1 + 1e-6


# --- bad input -------------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = save_picture(picture(2, "black-on-white"), folder / "good.png")
    text = folder / "notes.png"
    text.write_text("not a picture\n")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    blank = save_picture(Image.new("RGB", (64, 64), (255, 255, 255)), folder / "blank.png")
    truncated = folder / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    return {
        "good": good,
        "missing": folder / "missing.png",
        "text": text,
        "empty": empty,
        "blank": blank,
        "truncated": truncated,
        "folder": folder,
    }


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("mode", "convert"),
    [
        ("I;16", lambda eight: eight.astype(np.uint16) * 257),  # 0..65535, as Pillow opens a 16-bit PNG
        ("I;16B", lambda eight: (eight.astype(np.uint16) * 257).astype(">u2")),
        ("I", lambda eight: eight.astype(np.int32) * 257),  # a 16-bit PNG opened as 32-bit integers
        ("F", lambda eight: eight.astype(np.float32) / 255),
        ("F", lambda eight: eight.astype(np.float32)),  # what convert("F") makes of 8 bits
    ],
)
def test_deep_greyscale_is_scaled_from_its_range_not_clipped(mode, convert):
    eight = np.asarray(picture(6, "black-on-white").convert("L"))
    deep = Image.fromarray(convert(eight))
    assert deep.mode == mode
    np.testing.assert_allclose(gray(deep), eight / 255, atol=1e-6)


@pytest.mark.bad_input
def test_a_16_bit_png_reads_like_its_8_bit_version(tmp_path):
    eight = np.asarray(picture(6, "black-on-white").convert("L"))
    sixteen = save_picture(Image.fromarray(eight.astype(np.uint16) * 257), tmp_path / "6-16-bit.png")
    with Image.open(sixteen) as opened:
        assert opened.mode.startswith("I")  # Pillow keeps the 16 bits
    expected = image_pixels(save_picture(Image.fromarray(eight), tmp_path / "6-8-bit.png"))
    np.testing.assert_allclose(image_pixels(sixteen), expected, atol=1e-4)


@pytest.mark.bad_input
@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_render_samples_into_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, where):
    split = tmp_path / "test.pt"
    torch.save(
        {"images": torch.zeros(10, 28, 28, dtype=torch.uint8), "labels": torch.arange(10), "mean": 0.1, "std": 0.3},
        split,
    )
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder\n")
    out_dir, reason = (blocker / "sub", "Not a directory") if where == "under-a-file" else (blocker, "File exists")
    code, out, err = cli_in_process(["render-samples", str(out_dir), "--test", str(split)], capsys)
    assert (code, out) == (1, "")
    assert err == f"mnist-mlp render-samples: error: cannot create {out_dir}: {reason}\n"


def test_each_bad_file_gets_one_line_and_the_others_are_still_predicted(font_model, tmp_path, capsys):
    files = bad_files(tmp_path / "images")
    code, out, err = cli_in_process(["predict", "--model", str(font_model), *map(str, files.values())], capsys)
    assert code == 1
    assert out.splitlines() == [out.splitlines()[0]] and out.startswith(f"{files['good']}: 2 ")
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == len(files)  # one per bad file, then the summary
    for name, path in files.items():
        if name != "good":
            assert sum(line.startswith(f"mnist-mlp predict: error: {path}: ") for line in lines) == 1, name
    assert lines[-1] == f"mnist-mlp predict: error: {len(files) - 1} of {len(files)} image(s) could not be classified"
    assert "file not found" in err and "no digit found" in err and "not an image" in err


def test_json_reports_the_failures_in_place(font_model, tmp_path, capsys):
    files = bad_files(tmp_path / "images")
    code, out, _ = cli_in_process(["predict", "--json", "--model", str(font_model), *map(str, files.values())], capsys)
    assert code == 1
    entries = json.loads(out)["predictions"]
    assert [entry["file"] for entry in entries] == list(map(str, files.values()))
    assert entries[0]["label"] == 2
    assert all(set(entry) == {"file", "error"} for entry in entries[1:])


def test_a_model_file_of_the_wrong_shape_is_one_clear_line(font_model, tmp_path, capsys):
    blob = torch.load(font_model, weights_only=True)
    blob["architecture"]["hidden_sizes"] = [32]  # the weights are 64 wide
    wrong = tmp_path / "wrong.pt"
    torch.save(blob, wrong)
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("hello\n")
    image = save_picture(picture(2, "black-on-white"), tmp_path / "two.png")
    for model, reason in (
        (wrong, "weights do not fit"),
        (not_a_model, "refused to load"),
        (tmp_path / "nope.pt", "not found"),
    ):
        code, out, err = cli_in_process(["predict", "--model", str(model), str(image)], capsys)
        assert (code, out) == (1, "")
        assert err.startswith(f"mnist-mlp predict: error: {model}: ") and reason in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (torch.nn.Linear(100, 10), "does not take one row of 784"),
        (torch.nn.Linear(784, 5), "returns (1, 5)"),
        (torch.nn.Linear(784, 10), "not probabilities"),
    ],
)
def test_a_module_that_is_not_784_pixels_to_10_probabilities_is_refused(module, reason):
    with pytest.raises(ModelError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        predict.check_classifier(module, "some-model")


def test_top_k_outside_1_to_10_is_a_usage_error(font_model, capsys):
    code, _, err = cli_in_process(["predict", "--top-k", "11", "--model", str(font_model), "x.png"], capsys)
    assert code == 2 and "expected a whole number from 1 to 10" in err


@pytest.mark.integration
def test_the_console_script_exits_nonzero_on_a_bad_file(font_model, styled_digits, tmp_path):
    good = next(iter(styled_digits))
    result = run(
        [str(BIN / "mnist-mlp"), "predict", "--model", str(font_model), str(good), str(tmp_path / "gone.png")],
        tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout.startswith(f"{good}: {styled_digits[good]} ")
    assert f"mnist-mlp predict: error: {tmp_path / 'gone.png'}: file not found" in result.stderr


# --- MLflow models ---------------------------------------------------------------------


def test_an_mlflow_model_uri_predicts_like_the_checkpoint(mlflow_store, font_model, styled_digits, tmp_path):
    import mlflow

    from mnist_mlp.core.checkpoint import load_checkpoint

    experiment_id = store.ensure_experiment("predict", root=tmp_path)
    example = np.stack([image_pixels(path) for path in list(styled_digits)[:2]])
    with mlflow.start_run(experiment_id=experiment_id) as active:
        model_uri = runs.Run(active.info.run_id).log_model(load_checkpoint(font_model).classifier(), example)
    files = list(styled_digits)
    expected = predict.predict_files(files, predict.load_classifier(str(font_model)), top_k=3)
    for uri in (f"runs:/{active.info.run_id}/model", model_uri):
        classifier = predict.load_classifier(uri)  # checks one row, though the example had two
        got = predict.predict_files(files, classifier, top_k=3)
        assert [r.label for r in got] == [r.label for r in expected] == list(styled_digits.values())
        np.testing.assert_allclose([r.top_k[0][1] for r in got], [r.top_k[0][1] for r in expected], atol=1e-5)
    # logged as a torch.export program, not a pickle
    artifacts = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "download")))
    assert (artifacts / "data" / "model.pt2").is_file() and not list(artifacts.rglob("*.pth"))


def test_an_unknown_run_is_one_clear_line(mlflow_store, capsys):
    code, out, err = cli_in_process(["predict", "--model", "runs:/0123456789abcdef/model", "x.png"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("mnist-mlp predict: error: runs:/0123456789abcdef/model: cannot download the MLflow model")
    assert len(err.splitlines()) == 1


def test_a_pickled_mlflow_model_is_not_unpickled(tmp_path, font_model, monkeypatch):
    import mlflow

    from mnist_mlp.core.checkpoint import load_checkpoint

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's default; predict overrides it
    folder = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        load_checkpoint(font_model).classifier(), str(folder), serialization_format="pickle", pip_requirements=["torch"]
    )
    with pytest.raises(UserError, match="refused: not a model this project logged"):
        predict.load_classifier(str(folder))
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"
