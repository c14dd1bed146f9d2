"""files.py: every output appears whole or not at all; checksums."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from mnist_mlp import files


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "deep" / "out.txt"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"

    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    files.write_json(target, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        files.write_json(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_writers(tmp_path):
    files.write_bytes(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    files.write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    files.write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text().endswith("\n")
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2]}

    rows = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    files.write_csv(tmp_path / "log.csv", rows)
    with open(tmp_path / "log.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"epoch": "1", "loss": "0.5"}, {"epoch": "2", "loss": "0.25"}]

    files.save_torch(tmp_path / "t.pt", {"x": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))


def test_save_figure_uses_the_suffix_as_format(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    files.save_figure(tmp_path / "plot.png", figure)
    files.save_figure(tmp_path / "plot.svg", figure)
    plt.close(figure)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "plot.svg").read_bytes()[:500]


def test_md5_of_matches_hashlib_across_chunks(tmp_path):
    payload = bytes(range(256)) * 9000  # over the 1 MiB read size
    (tmp_path / "blob").write_bytes(payload)
    assert files.md5_of(tmp_path / "blob") == hashlib.md5(payload).hexdigest()


def test_written_files_get_the_usual_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    from mnist_mlp import files

    old = os.umask(0o022)
    try:
        files.write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\n", "YAML aliases expand to more than 10000 values; write the values out"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "YAML nested too deeply to be a rules file"),
        ("seed: " + "1" * 5000 + "\n", "as an integer (of at most 4300 digits)"),
        ("x: !!int abc\n", "cannot read 'abc' as an integer"),
        ("? [a]\n: 1\n", "found unhashable key"),
    ],
    ids=["recursive-alias", "deep-nesting", "5000-digit-int", "bad-int-tag", "list-as-key"],
)
def test_hostile_yaml_is_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(LookupError) as refused:  # read_yaml raises the caller's error class
        files.read_yaml(path, LookupError, "rules file")
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and expected in message and len(message.splitlines()) == 1


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "train:\n  augment:\n    shift: 1\n    shift: 2\n",
            "duplicate key 'shift' (train.augment.shift) at line 4 (first at line 3)",
        ),
        (
            "train: {lr: 0.1, lr: 0.2}\n",
            "duplicate key 'lr' (train.lr) at line 1, column 18 (first at line 1, column 9)",
        ),
    ],
    ids=["nested-block", "one-flow-line"],
)
def test_a_duplicate_key_names_its_dotted_key_and_both_places(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(LookupError, match="a key may appear only once$") as refused:
        files.read_yaml(path, LookupError, "params file")
    assert expected in str(refused.value)


def test_merge_keys_are_read_and_a_key_they_override_is_not_a_duplicate(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "base: &base {lr: 0.1, epochs: 2}\nlayered: &layered {<<: *base, lr: 0.2}\ntrain: {<<: *layered, epochs: 3}\n"
    )
    assert files.read_yaml(path, LookupError, "params file")["train"] == {"lr": 0.2, "epochs": 3}


def test_remove_leftovers_deletes_only_the_killed_writes_of_that_target(tmp_path):
    target = tmp_path / "train-images-idx3-ubyte"
    killed = tmp_path / f".{target.name}.k1ll3d{files.TEMP_SUFFIX}"  # what atomic_path leaves after kill -9
    killed.write_bytes(b"half")
    others = [tmp_path / ".train-labels-idx1-ubyte.abc.tmp", tmp_path / f"{target.name}.tmp", target]
    for path in others:
        path.write_bytes(b"keep")
    assert files.remove_leftovers(target) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in others)
    assert files.remove_leftovers(tmp_path / "absent" / "x") == []
