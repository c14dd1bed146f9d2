"""File helpers: atomic writes (a temp file beside the target, then a rename), checksums, and the one YAML reader
(`read_yaml`: safe, bounded, one line per fault) that every params, preset, rules and search space file goes through."""

from __future__ import annotations

import contextlib
import contextvars
import csv
import errno
import glob
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnist_mlp.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class NoSpaceError(UserError, OSError):
    """The disk is full: the message names the file that could not be written."""


# the outputs staged by `one_unit`: (temp file, target), renamed together when it ends
_staged: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("staged", default=None)


@contextlib.contextmanager
def _no_space_named(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space left on device: {path}") from None
        raise


TEMP_SUFFIX = ".tmp"  # atomic_path's temp files are .<name>.<random>.tmp beside the target (.dvcignore skips them)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete the temp files that a killed atomic write to `path` left (kill -9 runs no cleanup); return them.

    Only for a writer that owns the folder (a DVC stage: DVC locks the workspace), never beside a live writer.
    """
    path = Path(path)
    leftovers = sorted(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}")) if path.parent.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it over `path` only on success, with `mode`
    (default: the mode a plain open() would give).

    Inside `one_unit` the rename waits for the unit's end, with every other output's.
    """
    path = Path(path)
    with _no_space_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path: Path | None = Path(tmp)
    try:
        with _no_space_named(path):
            yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp_path, 0o666 & ~_umask() if mode is None else mode)
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


# a params file holds ~60 values; aliases that add more are a "billion laughs" file, which would
# take minutes and gigabytes to validate or print
MAX_YAML_ALIAS_VALUES = 10_000


class _Refused(Exception):
    """A YAML file that parses but that `read_yaml` will not load; the message says why."""


def _expanded_size(node: Any, sizes: dict[int, float]) -> float:
    """How many values `node` stands for with every alias written out; `sizes` memoizes shared nodes."""
    import yaml

    if id(node) not in sizes:
        sizes[id(node)] = float("inf")  # until counted: an alias inside itself (`&a [*a]`) never ends
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _yaml_loader():
    """PyYAML's safe loader, reading floats as YAML 1.2 does: DVC's `-S train.lr=1e-5` writes `1e-05`,
    which YAML 1.1 (PyYAML's default) reads as a string. It refuses a key given twice (PyYAML keeps
    the last) and aliases that expand past MAX_YAML_ALIAS_VALUES."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.keys: list[str] = []  # the key of each node being composed, outermost first

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.keys.append(index.value if isinstance(index, yaml.ScalarNode) else "" if index is None else str(index))
            try:
                return super().compose_node(parent, index)
            finally:
                self.keys.pop()

        # checked here, not in construct_mapping: there merge keys (`<<: *base`) are already
        # flattened into the mapping, and a key they bring that the mapping sets again is not a duplicate
        def compose_mapping_node(self, anchor: Any) -> Any:
            node = super().compose_mapping_node(anchor)
            first: dict[tuple[str, str], Any] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    earlier = first.setdefault((key.tag, key.value), key)
                    if earlier is not key:
                        dotted = ".".join(part for part in [*self.keys, key.value] if part)
                        named = f"'{key.value}'" + (f" ({dotted})" if dotted != key.value else "")
                        same_line = earlier.start_mark.line == key.start_mark.line  # `{lr: 1, lr: 2}`
                        where = [
                            f"line {mark.line + 1}" + (f", column {mark.column + 1}" if same_line else "")
                            for mark in (key.start_mark, earlier.start_mark)
                        ]
                        raise _Refused(
                            f"duplicate key {named} at {where[0]} (first at {where[1]}); a key may appear only once"
                        )
            return node

        def construct_document(self, node: Any) -> Any:
            sizes: dict[int, float] = {}
            if _expanded_size(node, sizes) - len(sizes) > MAX_YAML_ALIAS_VALUES:
                raise _Refused(f"YAML aliases expand to more than {MAX_YAML_ALIAS_VALUES} values; write the values out")
            return super().construct_document(node)

        def construct_yaml_int(self, node: Any) -> int:
            try:
                return super().construct_yaml_int(node)
            except ValueError:  # `!!int abc`, or past Python's 4300-digit limit: PyYAML lets int() raise
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"cannot read {node.value[:20]!r} as an integer (of at most 4300 digits)",
                    node.start_mark,
                ) from None

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    return Loader


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a YAML file; a missing, undecodable or broken one raises `error` with one line naming it."""
    import yaml

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    try:
        text = data.decode("utf-8")  # not the locale's encoding: YAML and DVC read UTF-8
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML {what}") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())
    except _Refused as exc:
        raise error(f"{path}: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise error(f"{path}: YAML nested too deeply to be a {what}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a constructor's int()/float() on an explicit tag
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
