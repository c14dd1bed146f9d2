"""params.py: every bad key fails before any work, naming the key and what is allowed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from mnist_mlp.params import Params, ParamsError, apply_preset, flatten, load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as caught:
        validate_params(raw, source="params.yaml")
    return str(caught.value)


def test_defaults_are_valid_and_match_the_committed_params_yaml():
    defaults = validate_params({})
    assert defaults == Params()
    assert defaults.train.hidden_sizes == [512, 512]
    # the committed params.yaml (not the workspace's: an experiment may have changed it) spells out every default
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    if committed.returncode != 0:
        pytest.skip("not a git checkout")
    assert validate_params(yaml.safe_load(committed.stdout)).model_dump() == defaults.model_dump()


def test_presets_are_valid():
    presets = sorted((ROOT / "params").glob("*.yaml"))
    assert presets, "params/ holds at least the tutorial preset"
    for preset in presets:
        validate_params(yaml.safe_load(preset.read_text()), source=str(preset))


def test_misspelled_key_names_the_key_and_suggests_the_right_one():
    message = error_of({"train": {"dropuot": 0.1}})
    assert "'train.dropuot'" in message
    assert "did you mean 'train.dropout'" in message
    assert message.startswith("params.yaml: ")


def test_misspelled_section_is_suggested():
    assert "did you mean 'train'" in error_of({"trian": {"epochs": 1}})


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("train", "dropout", 1.5, "< 1.0"),
        ("train", "dropout", -0.1, ">= 0.0"),
        ("train", "activation", "foo", "relu, tanh, sigmoid, gelu, leaky_relu"),
        ("train", "lr", -1, "> 0"),
        ("train", "lr", 0, "> 0"),
        ("train", "optimizer", "adagrad", "sgd, rmsprop, adam, adamw"),
        ("train", "schedule", "step", "none, cosine, onecycle"),
        ("train", "loss", "hinge", "cross_entropy, mse"),
        ("train", "device", "tpu", "auto, cpu, cuda"),
        ("train", "epochs", 0, "> 0"),
        ("train", "batch_size", -8, "> 0"),
        ("preprocess", "normalization", "zscore", "standardize, max, tutorial"),
        ("preprocess", "val_size", 60000, "<= 59999"),
        ("evaluate", "gallery_size", 0, ">= 1"),
    ],
)
def test_out_of_range_values_name_the_key_and_what_is_allowed(section, key, value, allowed):
    message = error_of({section: {key: value}})
    assert f"'{section}.{key}'" in message
    assert "; allowed: " in message and allowed in message.split("; allowed: ")[1]
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("epochs", "ten", "valid integer"),
        ("epochs", 2.5, "valid integer"),
        ("batch_size", True, "valid integer"),
        ("dropout", "0.5", "valid number"),
        ("hidden_sizes", "512", "valid list"),
        ("hidden_sizes", [512.0], "valid integer"),
        ("activation", 3, "relu"),
    ],
)
def test_wrong_types_name_the_key(key, value, expected):
    message = error_of({"train": {key: value}})
    assert f"'train.{key}'" in message
    assert expected in message


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"epochs": 1_000_000_000},
            "invalid 'train.epochs' (got 1000000000): Input should be less than or equal to 1000",
        ),
        (
            {"hidden_sizes": [16_384] * 16},
            "4,039,802,890 weights and biases; at most 300,000,000 (4.8 GB with AdamW's state)",
        ),
    ],
)
def test_a_run_too_long_or_too_big_for_any_machine_here_is_refused(train, message):
    assert message in error_of({"train": train})
    validate_params({"train": {"hidden_sizes": [16_384, 16_384], "epochs": 1000}})  # the largest the caps allow


@pytest.mark.parametrize("sizes", [[], [0], [512, -1]])
def test_empty_or_non_positive_hidden_sizes_fail(sizes):
    message = error_of({"train": {"hidden_sizes": sizes}})
    assert "'train.hidden_sizes'" in message
    assert "at least 1 item" in message or "positive integer" in message


def test_yaml_ints_are_accepted_where_floats_are_expected():
    params = validate_params({"train": {"lr": 1, "dropout": 0, "weight_decay": 0}})
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)
    assert params.train.dropout == 0.0


def test_every_bad_key_is_reported_once_per_line():
    message = error_of({"train": {"dropout": 2.0, "lr": -1}})
    lines = message.splitlines()
    assert len(lines) == 2
    assert any("'train.dropout'" in line for line in lines)
    assert any("'train.lr'" in line for line in lines)


def test_not_a_mapping_is_refused():
    with pytest.raises(ParamsError, match="expected a mapping"):
        validate_params([1, 2], source="x.yaml")


def test_load_params_reports_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match=f"{broken}: not valid YAML"):
        load_params(broken)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  dropuot: 0.3\n")
    with pytest.raises(ParamsError, match=f"^{bad}: unknown key 'train.dropuot'"):
        load_params(bad)


def test_flatten_keys_every_param_as_params_yaml_and_dvc_do():
    flat = flatten(validate_params({"train": {"activation": "tanh", "dropout": 0.5}}))
    assert flat["train.activation"] == "tanh"
    assert flat["train.dropout"] == 0.5
    assert flat["train.hidden_sizes"] == [512, 512]
    assert flat["preprocess.normalization"] == "standardize"
    assert flat["tracking.experiment"] == "mnist-mlp"
    assert not any(key.startswith("download") for key in flat)
    assert "dropout" not in flat


def test_preset_is_laid_over_the_params(tmp_path: Path):
    base = validate_params({"train": {"hidden_sizes": [16, 8]}})
    preset = tmp_path / "fast.yaml"
    preset.write_text(yaml.safe_dump({"train": {"batch_size": 25, "lr": 0.02}}))
    merged = apply_preset(base, preset)
    assert (merged.train.batch_size, merged.train.lr, merged.train.hidden_sizes) == (25, 0.02, [16, 8])
    with pytest.raises(ParamsError, match="nope.yaml: preset not found"):
        apply_preset(base, tmp_path / "nope.yaml")


def test_augment_is_off_by_default_and_each_value_is_bounded():
    assert validate_params({}).train.augment.model_dump() == {
        **dict.fromkeys(["shift", "rotation", "scale", "shear", "elastic_alpha", "elastic_sigma"], 0.0),
        "last_clean_epochs": 0,
    }
    assert validate_params({"train": {"augment": {"rotation": 10}}}).train.augment.rotation == 10.0  # YAML int
    for key, bad, allowed in (
        ("shift", 9, "<= 8.0"),
        ("rotation", -1, ">= 0.0"),
        ("scale", 0.6, "<= 0.5"),
        ("shear", 50, "<= 45.0"),
        ("elastic_alpha", 200, "<= 100.0"),
    ):
        with pytest.raises(ParamsError, match=rf"invalid 'train\.augment\.{key}' .*allowed: .*{allowed}"):
            validate_params({"train": {"augment": {key: bad}}})
    with pytest.raises(
        ParamsError, match=r"invalid 'train\.augment\.elastic_sigma' \(got 0\.0\): must be > 0 when elastic_alpha"
    ):
        validate_params({"train": {"augment": {"elastic_alpha": 34}}})
    with pytest.raises(
        ParamsError, match=r"unknown key 'train\.augment\.rotate'; did you mean 'train\.augment\.rotation'"
    ):
        validate_params({"train": {"augment": {"rotate": 10}}})
    assert (
        validate_params({"train": {"epochs": 20, "augment": {"last_clean_epochs": 19}}}).train.augment.last_clean_epochs
        == 19
    )
    with pytest.raises(
        ParamsError, match=r"train\.augment\.last_clean_epochs \(20\) must be below train\.epochs \(20\)"
    ):
        validate_params({"train": {"epochs": 20, "augment": {"shift": 2, "last_clean_epochs": 20}}})
    with pytest.raises(ParamsError, match=r"invalid 'train\.augment\.last_clean_epochs' \(got -1\).*>= 0"):
        validate_params({"train": {"augment": {"last_clean_epochs": -1}}})


def test_flatten_dots_nested_train_sections():
    flat = flatten(validate_params({"train": {"augment": {"rotation": 10}}}))
    assert flat["train.augment.rotation"] == 10.0 and flat["train.augment.shift"] == 0.0
    assert "train.augment" not in flat


def test_a_preset_sets_nested_keys_one_by_one(tmp_path: Path):
    base = validate_params({"train": {"augment": {"shift": 2, "elastic_alpha": 34, "elastic_sigma": 4}}})
    preset = tmp_path / "best.yaml"
    preset.write_text(yaml.safe_dump({"train": {"augment": {"rotation": 10}}}))
    augment = apply_preset(base, preset).train.augment
    assert (augment.shift, augment.rotation, augment.elastic_alpha, augment.elastic_sigma) == (2.0, 10.0, 34.0, 4.0)


def test_a_small_float_as_dvc_writes_it_is_a_number(tmp_path):
    # `dvc exp run -S train.lr=1e-5` writes `lr: 1e-05`, a string to YAML 1.1
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-05\n  weight_decay: 5E-4\n")
    params = load_params(path)
    assert (params.train.lr, params.train.weight_decay) == (1e-05, 5e-4)
    path.write_text("train:\n  lr: .e5\n")
    with pytest.raises(ParamsError, match="invalid 'train.lr'"):
        load_params(path)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lr": 10**400}}, "invalid 'train.lr' (got 1000"),  # float() of it overflows
        ({"train": {"seed": 10**5000}}, "invalid 'train.seed' (got an integer of 16610 bits)"),  # past str()'s limit
        ({"train": {"hidden_sizes": ["wide" * 100] * 100}}, "invalid 'train.hidden_sizes' (got ['widewide"),
    ],
    ids=["400-digit-float", "5000-digit-int", "long-list-of-long-strings"],
)
def test_a_huge_bad_value_is_one_short_line(raw, expected):
    message = error_of(raw)
    assert expected in message and len(message.splitlines()) == 1
    assert len(message.split(" (got ", 1)[1].split("): ", 1)[0]) <= 80


def test_the_largest_seed_is_taken_by_every_consumer():
    import pandas as pd
    import torch

    from mnist_mlp.params import MAX_SEED

    assert validate_params({"train": {"seed": MAX_SEED}, "preprocess": {"split_seed": MAX_SEED}}).train.seed == MAX_SEED
    torch.manual_seed(MAX_SEED)  # train.seeded_model, train.fit
    torch.Generator().manual_seed(MAX_SEED)  # data.split_train_val, augment.augmented_figure
    assert pd.Series([MAX_SEED]).astype("Int64")[0] == MAX_SEED  # sweep's experiment table
