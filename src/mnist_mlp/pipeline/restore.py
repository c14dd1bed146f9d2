"""The way back to a commit's params, lock file, model and reports, which never loses a model.

`dvc exp apply REV` first removes the outputs in the workspace, then checks out the ones that REV's
dvc.lock names from DVC's cache. An output that is in no cache is then gone: DVC prints "Checkout
failed for following targets" only afterwards. So `restore` checks first: every cached output of
REV must be in the local cache (a folder: its manifest and each of its files), or fetched from the
default remote. What no cache or remote holds is rebuilt instead: REV's git-tracked files (params,
code, dvc.lock) into the workspace, the outputs the cache holds checked out, then `dvc repro` runs
what is left. The model's bytes depend on the CPU kind (core/machine.py), so a lock made on another
kind is rebuilt to this kind's bytes, and `git status` then shows just the CPU-dependent files.
(DVC's run-cache cannot shortcut the rebuild: it skips stages with persistent outputs, and every stage
here persists its outputs so that a failed run keeps the previous ones.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mnist_mlp.errors import UserError


class RestoreError(UserError):
    """REV is not a commit here, or some of its outputs are in no local cache; nothing was changed."""


@dataclass(frozen=True)
class Missing:
    path: str  # the output as dvc.lock names it
    md5: str
    files: int  # of a folder: how many of its files are missing (0 for a file)


def _cached_outputs(repo, rev: str | None) -> Iterator:
    """The outputs of REV's dvc.lock (None: the workspace's) that DVC caches (not `cache: false`), as DVC's Output objects."""
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    try:
        for _ in repo.brancher(revs=[rev] if rev else [], workspace=rev is None):
            yield from (out for out in repo.index.outs if out.use_cache and out.hash_info.value is not None)
    except (RevError, DvcException) as exc:
        raise RestoreError(f"{rev}: not a commit of {repo.root_dir} ({exc})") from None


def cached_hashes(root: str | Path, rev: str | None = None) -> dict[str, str]:
    """{output: hash} of every cached output that REV's dvc.lock (None: the workspace's) names; a folder's ends in .dir."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {str(out): out.hash_info.value for out in _cached_outputs(repo, rev)}


# The stages whose outputs' bytes depend on the CPU kind (core/machine.py): training's floats. The data stages'
# outputs are the same bytes on every machine.
CPU_DEPENDENT_STAGES = ("train",)
RECORD = "reports/training_run.json"  # the train stage's record: made_by names the CPU kind that made the model


def recorded_cpu_kind(root: str | Path, rev: str = "HEAD") -> str | None:
    """The CPU kind REV's training record names (None where REV has no record, or one without made_by)."""
    import json
    import subprocess

    shown = subprocess.run(["git", "show", f"{rev}:{RECORD}"], cwd=root, capture_output=True, text=True)
    try:
        return json.loads(shown.stdout)["made_by"]["cpu_kind"] if shown.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        return None


def check_committed(root: str | Path, rev: str, here: str) -> tuple[bool, list[str]]:
    """Whether the workspace's cached outputs are the bytes REV's dvc.lock names, and a line per output.

    A CPU-dependent output (CPU_DEPENDENT_STAGES) is compared only when `here`, this machine's CPU kind
    (core.machine.cpu_kind), is the kind that made REV's model; on another its other bytes are expected, and said so.
    """
    from dvc.repo import Repo

    made_on = recorded_cpu_kind(root, rev)
    with Repo(str(root)) as repo:
        stage_of = {str(out): out.stage.name for out in _cached_outputs(repo, None)}
    committed, built = cached_hashes(root, rev), cached_hashes(root)
    ok, lines = True, [f"{rev}'s model was made on {made_on or 'an unrecorded CPU kind'}; this machine is {here}"]
    for path in sorted(committed.keys() | built.keys()):
        was, now = committed.get(path), built.get(path)
        if was == now:
            lines.append(f"{path}: {now}, the committed bytes")
        elif stage_of.get(path) in CPU_DEPENDENT_STAGES and made_on != here:
            lines.append(
                f"{path}: committed {was}, built {now}: CPU-dependent, and this is another CPU kind (not compared)"
            )
        else:
            ok = False
            lines.append(f"{path}: committed {was}, built {now}: other bytes")
    return ok, lines


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


def describe(missing: list[Missing]) -> str:
    """'models/model.pt (md5 ef7f9595)', or for a folder '..., 3 of its files)', comma-separated."""
    return ", ".join(
        f"{item.path} (md5 {item.md5[:8]}" + (f", {item.files} of its files)" if item.files else ")")
        for item in missing
    )


def fetch_missing(root: str | Path, rev: str) -> list[Missing]:
    """REV's outputs that neither the local cache nor the default remote (fetched from, where one is set) holds."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    missing = missing_outputs(root, rev)
    with Repo(str(root)) as repo:
        has_remote = bool(repo.config["core"].get("remote"))
    if missing and has_remote:
        with Repo(str(root)) as repo:
            try:
                repo.fetch(revs=[rev], workspace=False)
            except DvcException:  # unreachable, or missing there too: what stays missing is rebuilt
                pass
        missing = missing_outputs(root, rev)
    return missing


def restore(root: str | Path, rev: str = "HEAD", rebuild: bool = True) -> bool | None:
    """`dvc exp apply REV` once every output it would check out is in the local cache (fetched from the default
    remote where needed); returns None then. Otherwise, with `rebuild`, the outputs no cache holds are rebuilt
    (`rebuild_missing`: True when they came out as REV's bytes); without, nothing changes and RestoreError names them."""
    from dvc.repo import Repo

    missing = fetch_missing(root, rev)
    if missing and not rebuild:
        raise RestoreError(
            f"{rev}: {describe(missing)} in no local cache, so going back would delete what the workspace holds without "
            f"restoring it; nothing was changed: `dvc pull` it from a remote, or `dvc repro` to rebuild it"
        )
    if missing:
        return rebuild_missing(root, rev)
    with Repo(str(root)) as repo:
        repo.experiments.apply(rev)
    return None


def rebuild_missing(root: str | Path, rev: str) -> bool:
    """REV's git-tracked files into the workspace (HEAD and the index stay), the outputs the cache holds checked
    out, then `dvc repro`: the stages whose outputs no cache holds run again. When every cached output came out
    as REV's bytes (a machine of the lock's CPU kind), REV's git-tracked files are put back too, so that only
    the run id and seconds of the new run (in the reports DVC does not cache) do not show as changes; returns
    whether they did. On another kind the new lock and reports stay: they describe the model really built."""
    from dvc.repo import Repo

    _git_restore(root, rev)
    with Repo(str(root)) as repo:
        repo.checkout(force=True, allow_missing=True)
        repo.reproduce()
    same = cached_hashes(root) == cached_hashes(root, rev)
    if same:
        _git_restore(root, rev)
    return same


def _git_restore(root: str | Path, rev: str) -> None:
    """Every file git tracks, as REV has it, into the workspace; HEAD and the index stay."""
    import subprocess

    done = subprocess.run(
        ["git", "restore", f"--source={rev}", "--worktree", "--", "."], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RestoreError(
            f"{rev}: git could not restore its files ({(done.stderr.strip().splitlines() or ['?'])[-1]})"
        )
