"""Fetch the four MNIST files, verify their md5, write them uncompressed and atomically.

Sources are tried in order: a local mirror (a folder or a URL holding the files,
gzip or raw) when one is configured, then torchvision's official mirrors.
"""

from __future__ import annotations

import gzip
import shutil
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path

from mnist_mlp import files
from mnist_mlp.errors import UserError, redact


@dataclass(frozen=True)
class MnistFile:
    name: str  # uncompressed file name, as the IDX files are published
    md5: str  # md5 of the uncompressed content (canonical)


MNIST_FILES = (
    MnistFile("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
    MnistFile("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
    MnistFile("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    MnistFile("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
)


class DownloadError(UserError, RuntimeError):
    """No source produced a verified file; the message names every source tried."""


def official_mirrors() -> list[str]:
    from torchvision.datasets import MNIST

    return list(MNIST.mirrors)


def _is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https", "ftp", "file")


def _fetch_from_folder(folder: Path, name: str, into: Path) -> None:
    for candidate, opener in ((folder / f"{name}.gz", gzip.open), (folder / name, open)):
        if candidate.is_file():
            with opener(candidate, "rb") as src, open(into, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return
    raise FileNotFoundError(f"neither {name}.gz nor {name} in {folder}")


def _without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """(the URL minus user:password, an Authorization header carrying them): urllib cannot
    take credentials inside a URL, and an error message quoting it would leak them."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.username is None and parsed.password is None:
        return url, {}
    import base64

    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


def _fetch_from_url(base: str, name: str, into: Path, timeout: float) -> None:
    import urllib.request

    base = base if base.endswith("/") else base + "/"
    errors = []
    for suffix in (".gz", ""):
        url, headers = _without_credentials(base + name + suffix)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
                payload = response.read()
        except Exception as exc:  # noqa: BLE001 - every network error means "try the next"
            errors.append(f"{redact(url)}: {exc}")
            continue
        into.write_bytes(gzip.decompress(payload) if suffix == ".gz" else payload)
        return
    raise OSError("; ".join(errors))


def _fetch(source: str, name: str, into: Path, timeout: float) -> None:
    if _is_url(source):
        _fetch_from_url(source, name, into, timeout)
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"mirror folder {folder} does not exist")
        _fetch_from_folder(folder, name, into)


def expected_files(checksums_file: str | None = None) -> tuple[MnistFile, ...]:
    """MNIST's canonical checksums, or those of a YAML {file name: md5} (another MNIST-format data set)."""
    if not checksums_file:
        return MNIST_FILES
    path = Path(checksums_file)
    sums = files.read_yaml(path, DownloadError, "checksums file")
    names = [item.name for item in MNIST_FILES]
    if not isinstance(sums, dict) or sorted(sums) != sorted(names):
        raise DownloadError(f"{path}: expected a mapping of exactly {', '.join(names)} to md5 hex digests")
    return tuple(MnistFile(name, str(sums[name])) for name in names)


def download_mnist(
    out_dir: str | Path, sources: list[str], expected: tuple[MnistFile, ...] = MNIST_FILES, timeout: float = 30.0
) -> dict[str, str]:
    """Write the four verified IDX files into `out_dir`; return {file name: md5}.

    A file already present with the right md5 is kept. Each file is verified
    before it is renamed into place, so an interrupted run leaves no partial file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in expected:
        target = out_dir / item.name
        files.remove_leftovers(target)  # a download killed earlier
        if target.is_file() and files.md5_of(target) == item.md5:
            continue
        if not sources:
            raise DownloadError(
                f"no source to download {item.name} from: set $MNIST_MIRROR or download.mirror to a folder or URL, "
                "or allow the official mirrors (MNIST_OFFICIAL_MIRRORS is 'none')"
            )
        tried = []
        # the temp file (.name.*.tmp beside the target) becomes the target only once verified
        with files.atomic_path(target) as staged:
            for source in sources:
                try:
                    _fetch(source, item.name, staged, timeout)
                except (OSError, EOFError, zlib.error) as exc:
                    tried.append(f"{redact(source)} ({exc})")
                    continue
                got = files.md5_of(staged)
                if got != item.md5:
                    tried.append(f"{redact(source)} (md5 {got}, expected {item.md5})")
                    continue
                break
            else:
                raise DownloadError(f"could not get a verified {item.name}; tried: " + "; ".join(tried))
    return {item.name: item.md5 for item in expected}


def official_sources(setting: str | None) -> list[str]:
    """$MNIST_OFFICIAL_MIRRORS: unset = torchvision's mirrors; `none` or empty = none (offline,
    air-gapped, tests); else a comma-separated list of URLs that replaces them."""
    if setting is None:
        return official_mirrors()
    if setting.strip().lower() in ("", "none"):
        return []
    return [url.strip() for url in setting.split(",") if url.strip()]


def resolve_sources(
    mirror: str | None, environ_mirror: str | None, repo_root: Path | None, official: list[str] | None = None
) -> list[str]:
    """The mirror (environment first, then the param) followed by `official` (default: torchvision's mirrors)."""
    sources = []
    chosen = environ_mirror or mirror
    if chosen:
        if not _is_url(chosen) and not Path(chosen).expanduser().is_absolute() and repo_root is not None:
            # a relative folder means relative to the repo, even from a DVC experiment's temp copy
            local = Path(chosen)
            chosen = str(local if local.exists() else repo_root / local)
        sources.append(chosen)
    sources.extend(official_mirrors() if official is None else official)
    return sources
