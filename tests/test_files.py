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
