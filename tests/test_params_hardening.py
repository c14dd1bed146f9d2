"""params.yaml as a hostile or clumsy colleague writes it: one line within a second, never a hang,
a traceback or a silent last-wins."""

from __future__ import annotations

import time

import pytest

from mnist_mlp.params import MAX_LAYERS, MAX_WIDTH, ParamsError, load_params, validate_params

ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
    + "train: {lr: *i}\n"
)


@pytest.mark.bad_input
def test_an_alias_bomb_is_refused_within_a_second(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 600
    started = time.monotonic()
    with pytest.raises(ParamsError, match=r"aliases expand to more than 10000 values; write the values out") as refused:
        load_params(path)
    assert time.monotonic() - started < 2 and len(str(refused.value).splitlines()) == 1


@pytest.mark.bad_input
def test_a_small_alias_is_still_read(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {hidden_sizes: [&width 64, *width]}\n")
    assert load_params(path).train.hidden_sizes == [64, 64]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "text, key", [("train:\n  lr: 0.1\n  lr: 0.2\n", "'lr'"), ("train: {lr: 0.1}\ntrain: {dropout: 0.5}\n", "'train'")]
)
def test_a_duplicate_key_is_refused_naming_it_and_its_line(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=f"duplicate key {key} .*line [23]"):
        load_params(path)


@pytest.mark.bad_input
def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes("train: {activation: r\xe9lu}\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=r"params.yaml: not UTF-8 text \(byte 21\); expected a YAML params file$"):
        load_params(path)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"seed": 2**64}}, "invalid 'train.seed' (got 18446744073709551616)"),
        ({"preprocess": {"split_seed": 2**64}}, "invalid 'preprocess.split_seed'"),
        (
            {"train": {"weight_decay": float("inf")}},
            "invalid 'train.weight_decay' (got inf): Input should be a finite number",
        ),
        ({"train": {"lr": float("nan")}}, "invalid 'train.lr' (got nan): Input should be a finite number"),
        ({"train": {"dropout": float("-inf")}}, "invalid 'train.dropout'"),
        (
            {"train": {"hidden_sizes": [100000, 100000]}},
            f"every hidden size must be a positive integer, at most {MAX_WIDTH}",
        ),
        ({"train": {"hidden_sizes": [8] * (MAX_LAYERS + 1)}}, f"at most {MAX_LAYERS} items"),
        ({"tracking": {"experiment": "x" * 501}}, "String should have at most 500 characters"),
        ({"tracking": {"experiment": "two\nlines"}}, "invalid 'tracking.experiment'"),
    ],
)
def test_bounds_and_finite_numbers_are_checked_once(raw, message):
    with pytest.raises(ParamsError) as refused:
        validate_params(raw)
    assert message in str(refused.value) and len(str(refused.value).splitlines()) == 1


def test_the_largest_allowed_hidden_sizes_fit_in_an_mlflow_param():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    # every allowed list is at most MAX_LAYERS widths of at most MAX_WIDTH: this text bounds its length
    assert len(str([MAX_WIDTH] * MAX_LAYERS)) < MAX_PARAM_VAL_LENGTH
    deepest = validate_params(
        {"train": {"hidden_sizes": [4096] * MAX_LAYERS}}
    ).train.hidden_sizes  # 255 M weights: allowed
    assert len(str(deepest)) < MAX_PARAM_VAL_LENGTH
