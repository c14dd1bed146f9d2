"""The way back to a commit's params, lock file, model and reports, which never loses a model.

`dvc exp apply REV` first removes the outputs in the workspace, then checks out the ones that REV's
dvc.lock names from DVC's cache. An output that is in no cache is then gone: DVC prints "Checkout
failed for following targets" only afterwards. So `restore` checks first: every cached output of
REV must be in the local cache (a folder: its manifest and each of its files). Otherwise it names
what is missing and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from mnist_mlp.errors import UserError


class RestoreError(UserError):
    """REV is not a commit here, or some of its outputs are in no local cache; nothing was changed."""


@dataclass(frozen=True)
class Missing:
    path: str  # the output as dvc.lock names it
    md5: str
    files: int  # of a folder: how many of its files are missing (0 for a file)


def _cached_outputs(repo, rev: Optional[str]) -> Iterator:
    """The outputs of REV's dvc.lock (None: the workspace's) that DVC caches (not `cache: false`), as DVC's Output objects."""
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    try:
        for _ in repo.brancher(revs=[rev] if rev else [], workspace=rev is None):
            yield from (out for out in repo.index.outs if out.use_cache and out.hash_info.value is not None)
    except (RevError, DvcException) as exc:
        raise RestoreError(f"{rev}: not a commit of {repo.root_dir} ({exc})") from None


def cached_hashes(root: str | Path, rev: Optional[str] = None) -> dict[str, str]:
    """{output: hash} of every cached output that REV's dvc.lock (None: the workspace's) names; a folder's ends in .dir."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {str(out): out.hash_info.value for out in _cached_outputs(repo, rev)}


def missing_outputs(root: str | Path, rev: str) -> list[Missing]:
    """REV's cached outputs (dvc.lock) that the local cache cannot restore."""
    from dvc.repo import Repo

    missing = []
    with Repo(str(root)) as repo:
        cache = repo.cache.local
        for out in _cached_outputs(repo, rev):
            oid = out.hash_info.value
            if not cache.exists(oid):
                missing.append(Missing(str(out), oid, 0))
            elif out.hash_info.isdir:
                absent = sum(not cache.exists(entry.value) for _, _, entry in out.get_obj())
                if absent:
                    missing.append(Missing(str(out), oid, absent))
    return missing


def restore(root: str | Path, rev: str = "HEAD") -> None:
    """`dvc exp apply REV`, only once every output it would check out is in the local cache."""
    from dvc.repo import Repo

    missing = missing_outputs(root, rev)
    if missing:
        named = ", ".join(f"{item.path} (md5 {item.md5[:8]}" + (f", {item.files} of its files)" if item.files else ")") for item in missing)
        raise RestoreError(
            f"{rev}: {named} in no local cache, so going back would delete what the workspace holds without "
            f"restoring it; nothing was changed: `dvc pull` it from a remote, or `dvc repro` to rebuild it"
        )
    with Repo(str(root)) as repo:
        repo.experiments.apply(rev)
