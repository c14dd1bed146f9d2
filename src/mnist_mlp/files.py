"""File helpers: atomic writes (a temp file beside the target, then a rename) and checksums."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from mnist_mlp.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class NoSpaceError(UserError, OSError):
    """The disk is full: the message names the file that could not be written."""


# the outputs staged by `one_unit`: (temp file, target), renamed together when it ends
_staged: contextvars.ContextVar[Optional[list[tuple[Path, Path]]]] = contextvars.ContextVar("staged", default=None)


@contextlib.contextmanager
def _no_space_named(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on device: {path}") from None
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it over `path` only on success.

    Inside `one_unit` the rename waits for the unit's end, with every other output's.
    """
    path = Path(path)
    with _no_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path: Optional[Path] = Path(tmp)
    try:
        with _no_space_named(path):
            yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask())
        staged = _staged.get()
        if staged is None:
            os.replace(tmp_path, path)
        else:
            staged.append((tmp_path, path))
            tmp_path = None  # the unit renames or removes it
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def one_unit() -> Iterator[None]:
    """A stage's outputs as one unit: every atomic write inside is staged, and all are renamed into
    place when the block ends; if anything fails, none is, and every previous output stays as it was."""
    staged: list[tuple[Path, Path]] = []
    token = _staged.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _staged.reset(token)
    for tmp, target in staged:
        os.replace(tmp, target)


def staged_path(path: str | Path) -> Path:
    """Where the content of output `path` is now: its staged temp file inside `one_unit`, else `path`."""
    for tmp, target in reversed(_staged.get() or []):
        if target == Path(path):
            return tmp
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | Path, obj: Any) -> None:
    import torch

    # serialized in memory first: a full disk is then an OSError naming the file, not torch's
    # "unexpected pos"; and the zip's records are named `archive/`, not after a random temp name
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def save_figure(path: str | Path, figure: Any) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


MAX_YAML_NODES = 10_000  # a params file has ~60 values; an alias bomb expands to millions


def _yaml_loader():
    """PyYAML's safe loader, reading floats as YAML 1.2 does (DVC's `-S train.lr=1e-5` writes `1e-05`,
    which YAML 1.1 reads as a string), refusing duplicate keys and aliases that expand beyond a small size."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_document(self, node):
            self._count_nodes(node, budget=[MAX_YAML_NODES])
            return super().construct_document(node)

        def _count_nodes(self, node, budget: list[int]) -> None:
            # aliases are the same node object: walking the graph counts what they expand to
            budget[0] -= 1
            if budget[0] < 0:
                raise yaml.constructor.ConstructorError(None, None, f"aliases expand to more than {MAX_YAML_NODES} values; "
                                                        "write the values out", node.start_mark)  # fmt: skip
            if isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    self._count_nodes(item, budget)
            elif isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    self._count_nodes(key, budget)
                    self._count_nodes(value, budget)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (the last would win silently)",
                                                            key_node.start_mark)  # fmt: skip
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a YAML file; a missing, broken or non-UTF-8 one raises `error` with one line naming it."""
    import yaml

    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML {what}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def write_csv(path: str | Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def md5_of(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
