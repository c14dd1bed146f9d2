"""Bad data as a user meets it, through the download and preprocess stages.

Each case: exit 1, one `stage: error:` line naming the file or source and what was
expected, the previous outputs byte-for-byte as they were, and no temp file left.
"""

from __future__ import annotations

import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from ops.processes import free_port
from support.faults import assert_one_clear_error, snapshot, stage_in_process, temp_leftovers
from support.mnist_files import RAW_NAMES, synthetic_digits, write_checksums, write_idx, write_tiny_mnist
from support.params import tiny_params

TRAIN_IMAGES, TRAIN_LABELS = RAW_NAMES["train"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with params.yaml, a good mirror, its checksums, and outputs of an earlier run."""
    tiny_params(tmp_path / "params.yaml")
    good = write_tiny_mnist(tmp_path / "good-mirror", train_count=120, test_count=40)
    write_checksums(good, tmp_path / "checksums.yaml")
    # an earlier run's outputs: stale versions a failed run must neither replace nor delete
    old_raw = write_tiny_mnist(tmp_path / "data" / "raw", train_count=60, test_count=20, compress=False)
    (old_raw / "notes.txt").write_text("left by an earlier run\n")
    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (processed / f"{split}.pt").write_bytes(f"earlier {split} tensors".encode())
    return tmp_path


def _download(workdir: Path, mirror: str, capsys, monkeypatch, official: str = "none"):
    monkeypatch.setenv("MNIST_MIRROR", mirror)
    monkeypatch.setenv("MNIST_CHECKSUMS", str(workdir / "checksums.yaml"))
    monkeypatch.setenv("MNIST_OFFICIAL_MIRRORS", official)
    return stage_in_process("download", ["--out", "data/raw"], workdir, capsys, monkeypatch)


def _bad_mirror(workdir: Path, damage) -> Path:
    mirror = workdir / "bad-mirror"
    shutil.copytree(workdir / "good-mirror", mirror)
    damage(mirror / f"{TRAIN_IMAGES}.gz")
    return mirror


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    path.write_bytes(b"this is not gzip at all" * 50)


def _tamper(path: Path) -> None:  # still valid gzip: only the md5 can tell
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[-1] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(data)))


def _remove(path: Path) -> None:
    path.unlink()


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncate, "Compressed file ended before the end-of-stream marker was reached"),
        (_garble, "Not a gzipped file"),
        (_tamper, "expected "),  # md5 <got>, expected <md5>
        (_remove, f"neither {TRAIN_IMAGES}.gz nor {TRAIN_IMAGES} in"),
    ],
    ids=["truncated-gzip", "corrupt-gzip", "checksum-mismatch", "missing-file"],
)
def test_a_bad_mirror_file_fails_the_download_naming_file_and_source(workdir, capsys, monkeypatch, damage, expected):
    mirror = _bad_mirror(workdir, damage)
    before = snapshot(workdir / "data")
    outcome = _download(workdir, str(mirror), capsys, monkeypatch)
    line = assert_one_clear_error(
        outcome, "download", f"could not get a verified {TRAIN_IMAGES}", str(mirror), expected
    )
    if damage is _tamper:
        sums = yaml.safe_load((workdir / "checksums.yaml").read_text())
        assert f"expected {sums[TRAIN_IMAGES]}" in line
    assert snapshot(workdir / "data") == before
    assert temp_leftovers(workdir / "data") == []


@pytest.mark.bad_input
def test_a_mirror_folder_that_does_not_exist_is_named(workdir, capsys, monkeypatch):
    before = snapshot(workdir / "data")
    outcome = _download(workdir, str(workdir / "no-such-mirror"), capsys, monkeypatch)
    assert_one_clear_error(outcome, "download", f"mirror folder {workdir / 'no-such-mirror'} does not exist")
    assert snapshot(workdir / "data") == before


class _NotFound(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404, "File not found")

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def http_404():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def refused_url():
    """A 127.0.0.1 port nobody listens on (bound then closed): connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}/mnist/"


@pytest.mark.bad_input
def test_dead_mirrors_are_each_tried_then_named(workdir, capsys, monkeypatch, http_404, refused_url):
    # the official mirrors are replaced by a refusing local port: nothing leaves this machine
    before = snapshot(workdir / "data")
    outcome = _download(workdir, http_404, capsys, monkeypatch, official=refused_url)
    assert outcome.out.startswith(f"download: sources in order: {http_404}, {refused_url}")
    line = assert_one_clear_error(outcome, "download", f"could not get a verified {TRAIN_IMAGES}; tried: ")
    assert f"{http_404}{TRAIN_IMAGES}.gz: HTTP Error 404" in line
    assert f"{refused_url}{TRAIN_IMAGES}.gz: <urlopen error [Errno 111] Connection refused>" in line
    assert line.index(http_404) < line.index(refused_url)
    assert snapshot(workdir / "data") == before
    assert temp_leftovers(workdir / "data") == []


@pytest.mark.bad_input
def test_no_source_at_all_is_one_clear_line(workdir, capsys, monkeypatch):
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.setenv("MNIST_OFFICIAL_MIRRORS", "none")
    before = snapshot(workdir / "data")
    outcome = stage_in_process("download", ["--out", "data/raw"], workdir, capsys, monkeypatch)
    assert_one_clear_error(outcome, "download", "no source to download train-images-idx3-ubyte from: set $MNIST_MIRROR")
    assert snapshot(workdir / "data") == before


@pytest.mark.fault
def test_the_next_mirror_is_used_when_the_first_is_dead(workdir, capsys, monkeypatch, refused_url):
    # a dead mirror first, the good folder second (as the official mirrors would be)
    outcome = _download(workdir, refused_url, capsys, monkeypatch, official=str(workdir / "good-mirror"))
    assert outcome.code == 0, outcome.err
    assert sorted(p.name for p in (workdir / "data/raw").iterdir()) == sorted(
        [*RAW_NAMES["train"], *RAW_NAMES["test"], "notes.txt"]
    )


# --- preprocess: raw files that passed (or bypassed) the checksum but are not MNIST ---


def _raw(workdir: Path) -> Path:
    raw = write_tiny_mnist(workdir / "bad-raw", train_count=120, test_count=40, compress=False)
    return raw


def _idx_bytes(array: np.ndarray, ndim_field: int | None = None, type_code: int = 0x08) -> bytes:
    import struct

    ndim = array.ndim if ndim_field is None else ndim_field
    return struct.pack(">HBB", 0, type_code, ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _wrong_magic(raw: Path) -> str:
    images, _ = synthetic_digits(120, 0)
    (raw / TRAIN_IMAGES).write_bytes(_idx_bytes(images, type_code=0x0D))  # 0x0D: float, not unsigned bytes
    return f"{raw / TRAIN_IMAGES}: bad IDX magic 0x00000d03, expected 0x00000803"


def _wrong_dimensions(raw: Path) -> str:
    images, _ = synthetic_digits(120, 0)
    write_idx(raw / TRAIN_IMAGES, images.reshape(120, 784), compress=False)
    return f"{raw / TRAIN_IMAGES}: IDX file has 2 dimensions, expected 3"


def _wrong_image_size(raw: Path) -> str:
    images, _ = synthetic_digits(120, 0)
    write_idx(raw / TRAIN_IMAGES, images[:, :27, :27], compress=False)
    return f"{raw / TRAIN_IMAGES}: images are (27, 27), expected (28, 28)"


def _counts_disagree(raw: Path) -> str:
    _, labels = synthetic_digits(120, 0)
    write_idx(raw / TRAIN_LABELS, labels[:119], compress=False)
    return f"{raw}: 120 images in {TRAIN_IMAGES} but 119 labels in {TRAIN_LABELS}; expected equal counts"


def _truncated_idx(raw: Path) -> str:
    path = raw / TRAIN_IMAGES
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size - 100])
    return f"{path}: {size - 100} bytes, expected {size} for shape (120, 28, 28) (truncated?)"


def _label_out_of_range(raw: Path) -> str:
    _, labels = synthetic_digits(120, 0)
    labels[7] = 12
    write_idx(raw / TRAIN_LABELS, labels, compress=False)
    return f"{raw / TRAIN_LABELS}: label 12 found, expected 0..9"


def _missing_raw_file(raw: Path) -> str:
    (raw / TRAIN_LABELS).unlink()
    return f"{raw / TRAIN_LABELS}: file not found"


def _empty_file(raw: Path) -> str:
    (raw / TRAIN_IMAGES).write_bytes(b"")
    return f"{raw / TRAIN_IMAGES}: 0 bytes, expected an IDX header of at least 4"


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "damage",
    [
        _wrong_magic,
        _wrong_dimensions,
        _wrong_image_size,
        _counts_disagree,
        _truncated_idx,
        _label_out_of_range,
        _missing_raw_file,
        _empty_file,
    ],
    ids=lambda f: f.__name__.strip("_").replace("_", "-"),
)
def test_a_bad_idx_file_fails_preprocess_with_what_was_expected(workdir, capsys, monkeypatch, damage):
    raw = _raw(workdir)
    expected = damage(raw)
    before = snapshot(workdir / "data")
    outcome = stage_in_process(
        "preprocess", ["--raw", str(raw), "--out", "data/processed"], workdir, capsys, monkeypatch
    )
    assert_one_clear_error(outcome, "preprocess", expected)
    assert snapshot(workdir / "data") == before
    assert temp_leftovers(workdir / "data") == []


@pytest.mark.bad_input
def test_val_size_too_large_for_the_data_names_the_key(workdir, capsys, monkeypatch):
    tiny_params(workdir / "params.yaml", preprocess={"val_size": 5000})
    before = snapshot(workdir / "data")
    outcome = stage_in_process(
        "preprocess", ["--raw", str(_raw(workdir)), "--out", "data/processed"], workdir, capsys, monkeypatch
    )
    assert_one_clear_error(outcome, "preprocess", "val_size 5000 must be between 1 and 119")
    assert snapshot(workdir / "data") == before


@pytest.mark.bad_input
def test_a_torn_cached_split_is_refused_by_train(workdir, capsys, monkeypatch):
    """A cached split cut short (as a crash would leave it without atomic writes) is never taken for a whole one."""
    good = write_tiny_mnist(workdir / "raw-ok", train_count=120, test_count=40, compress=False)
    tiny_params(workdir / "params.yaml", preprocess={"val_size": 20})
    assert (
        stage_in_process(
            "preprocess", ["--raw", str(good), "--out", "data/processed"], workdir, capsys, monkeypatch
        ).code
        == 0
    )
    cached = workdir / "data/processed/train.pt"
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])
    outcome = stage_in_process(
        "train", ["--model", "models/model.pt", "--log", "reports/log.csv"], workdir, capsys, monkeypatch
    )
    assert_one_clear_error(outcome, "train", "data/processed/train.pt: not a cached split written by preprocess")
    assert not (workdir / "models").exists() and not (workdir / "reports").exists()
