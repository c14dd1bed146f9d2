"""download.py: a folder mirror (gzip or raw), md5 verification, the checksums hook, sources."""

from __future__ import annotations

import gzip
import hashlib
import os

import pytest
import yaml

from mnist_mlp.data.download import (
    MNIST_FILES,
    DownloadError,
    MnistFile,
    download_mnist,
    expected_files,
    official_mirrors,
    resolve_sources,
)
from mnist_mlp.errors import redact
from mnist_mlp.files import md5_of
from support.mnist_files import write_tiny_mnist

NAMES = [item.name for item in MNIST_FILES]


def checksums_of(mirror) -> tuple[MnistFile, ...]:
    """The md5 of each uncompressed file, as a user's MNIST_CHECKSUMS would list them."""
    sums = []
    for name in NAMES:
        gz, raw = mirror / f"{name}.gz", mirror / name
        payload = gzip.decompress(gz.read_bytes()) if gz.exists() else raw.read_bytes()
        sums.append(MnistFile(name, hashlib.md5(payload).hexdigest()))
    return tuple(sums)


@pytest.mark.parametrize("compress", [True, False])
def test_download_from_a_folder_mirror_writes_uncompressed_verified_files(tmp_path, compress):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10, compress=compress)
    expected = checksums_of(mirror)
    out = tmp_path / "raw"

    assert download_mnist(out, [str(mirror)], expected) == {item.name: item.md5 for item in expected}
    assert sorted(path.name for path in out.iterdir()) == sorted(NAMES)  # no temp files left
    for item in expected:
        assert md5_of(out / item.name) == item.md5
    assert (out / "train-labels-idx1-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x01"


def test_wrong_md5_fails_naming_the_file_source_and_both_checksums(tmp_path):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10)
    # the real MNIST checksums: the synthetic files do not match them
    with pytest.raises(DownloadError) as caught:
        download_mnist(tmp_path / "raw", [str(mirror)], MNIST_FILES)
    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message
    assert str(mirror) in message
    assert f"expected {MNIST_FILES[0].md5}" in message
    assert not (tmp_path / "raw" / "train-images-idx3-ubyte").exists()
    assert not [p for p in (tmp_path / "raw").iterdir()]  # nothing half-written


def test_next_source_is_tried_when_one_fails(tmp_path):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10)
    out = tmp_path / "raw"
    download_mnist(out, [str(tmp_path / "no-such-folder"), str(mirror)], checksums_of(mirror))
    assert sorted(path.name for path in out.iterdir()) == sorted(NAMES)


def test_every_tried_source_is_named_when_none_works(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DownloadError, match=r"tried: .*no-such-folder.* does not exist.*neither .*\.gz nor"):
        download_mnist(tmp_path / "raw", [str(tmp_path / "no-such-folder"), str(empty)], MNIST_FILES)


def test_an_existing_verified_file_is_kept(tmp_path):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10)
    expected = checksums_of(mirror)
    out = tmp_path / "raw"
    download_mnist(out, [str(mirror)], expected)
    before = {name: os.stat(out / name).st_mtime_ns for name in NAMES}
    os.utime(out / NAMES[0], ns=(1, 1))
    # no source at all: the files already there must do
    download_mnist(out, [], expected)
    assert os.stat(out / NAMES[0]).st_mtime_ns == 1
    assert {name: os.stat(out / name).st_mtime_ns for name in NAMES[1:]} == {n: before[n] for n in NAMES[1:]}


def test_a_corrupted_existing_file_is_replaced(tmp_path):
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10)
    expected = checksums_of(mirror)
    out = tmp_path / "raw"
    download_mnist(out, [str(mirror)], expected)
    (out / NAMES[1]).write_bytes(b"torn")
    download_mnist(out, [str(mirror)], expected)
    assert md5_of(out / NAMES[1]) == expected[1].md5


def test_checksums_file_replaces_the_canonical_md5s(tmp_path):
    assert expected_files(None) == MNIST_FILES
    assert expected_files("") == MNIST_FILES
    mirror = write_tiny_mnist(tmp_path / "mirror", train_count=20, test_count=10)
    sums = {item.name: item.md5 for item in checksums_of(mirror)}
    path = tmp_path / "checksums.yaml"
    path.write_text(yaml.safe_dump(sums))
    loaded = expected_files(str(path))
    assert [item.name for item in loaded] == NAMES
    assert {item.name: item.md5 for item in loaded} == sums
    download_mnist(tmp_path / "raw", [str(mirror)], loaded)


def test_checksums_file_must_list_exactly_the_four_files(tmp_path):
    path = tmp_path / "checksums.yaml"
    path.write_text(yaml.safe_dump({NAMES[0]: "0" * 32}))
    with pytest.raises(DownloadError, match=f"{path}: expected a mapping of exactly train-images-idx3-ubyte"):
        expected_files(str(path))
    with pytest.raises(DownloadError, match="missing.yaml: checksums file not found"):
        expected_files(str(tmp_path / "missing.yaml"))
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(DownloadError, match="broken.yaml: not valid YAML"):
        expected_files(str(tmp_path / "broken.yaml"))


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("https://alice:s3cret@example.com/mnist/", "https://example.com/mnist/"),
        ("https://example.com:8443/mnist?token=abc", "https://example.com:8443/mnist"),
        ("http://bob@example.com/mnist", "http://example.com/mnist"),
        ("https://example.com/mnist/", "https://example.com/mnist/"),
        ("/data/mnist", "/data/mnist"),
    ],
)
def test_redact_strips_credentials_and_queries(source, shown):
    assert redact(source) == shown
    for secret in ("alice", "s3cret", "token", "bob@"):
        assert secret not in redact(source)


def test_a_failed_url_source_is_reported_without_credentials(tmp_path):
    # an unreachable port on localhost: fails at once, with no network involved
    source = "http://user:hunter2@127.0.0.1:9/mnist"
    with pytest.raises(DownloadError) as caught:
        download_mnist(tmp_path / "raw", [source], MNIST_FILES, timeout=2)
    assert "hunter2" not in str(caught.value) and "user" not in str(caught.value)
    assert "http://127.0.0.1:9/mnist" in str(caught.value)


def test_resolve_sources_environment_over_param_then_torchvision_mirrors(tmp_path):
    mirrors = official_mirrors()
    assert mirrors and all(m.startswith(("https://", "http://")) for m in mirrors)
    assert resolve_sources(None, None, tmp_path) == mirrors
    assert resolve_sources("/param/mirror", None, tmp_path) == ["/param/mirror", *mirrors]
    assert resolve_sources("/param/mirror", "/env/mirror", tmp_path) == ["/env/mirror", *mirrors]
    url = "https://mirror.example.com/mnist/"
    assert resolve_sources(url, None, tmp_path) == [url, *mirrors]
    assert resolve_sources(None, "/env/mirror", tmp_path, official=[]) == ["/env/mirror"]


def test_a_relative_mirror_is_relative_to_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = tmp_path / "repo"
    assert resolve_sources("mnist", None, repo)[0] == str(repo / "mnist")
    (tmp_path / "mnist").mkdir()  # present beside the cwd: taken as it is
    assert resolve_sources("mnist", None, repo)[0] == "mnist"
