"""The throwaway git + DVC project the pipeline, stage, sweep, fault and remote tests run in.

`build_template` makes it once a session (copying the sources, `git init`, `dvc init`, a first
commit: seconds of subprocesses); `copy_project` gives each test its own copy. A copy is as good as
a fresh build: git keeps no absolute path in .git, and DVC none in .dvc/config (its cache is the
relative default .dvc/cache; `copy_project` checks both).

Layout of a built or copied project folder (tests rely on it, e.g. `project.parent / "store"`):

    <folder>/project          the repo, params.yaml = the defaults made tiny (support.params.TINY_PARAMS)
    <folder>/mirror           the four synthetic MNIST files (MNIST_MIRROR)
    <folder>/checksums.yaml   their md5s (MNIST_CHECKSUMS)
    <folder>/store            the MLflow store's folder (MLFLOW_TRACKING_URI: sqlite:///<folder>/store/mlflow.db)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from support.cli import run
from support.mnist_files import write_checksums, write_tiny_mnist
from support.params import TINY_PARAMS, default_params, merge
from support.paths import BIN, ROOT

COPIED_FILES = ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore")
COPIED_FOLDERS = ("stages", "src", "params")
# set when pytest itself runs under dvc; STUDY_STORAGE: a test never reaches the user's own study database
CLEARED_ENV = ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "STUDY_STORAGE")


def project_env(folder: Path) -> dict[str, str]:
    """The environment of the project in `folder`: its mirror, checksums and store; never the network."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MNIST_MIRROR": str(folder / "mirror"),
        "MNIST_OFFICIAL_MIRRORS": "none",  # a test never reaches the network
        "MNIST_CHECKSUMS": str(folder / "checksums.yaml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'store' / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for key in CLEARED_ENV:
        env.pop(key, None)
    return env


def build_template(folder: Path) -> Path:
    """A git + DVC copy of this project on tiny synthetic data in `folder`/project, committed on main."""
    repo = folder / "project"
    repo.mkdir(parents=True)
    for name in COPIED_FILES:
        shutil.copy(ROOT / name, repo / name)
    for name in COPIED_FOLDERS:
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "params.yaml").write_text(yaml.safe_dump(merge(default_params(), TINY_PARAMS), sort_keys=False))
    mirror = write_tiny_mnist(folder / "mirror")
    write_checksums(mirror, folder / "checksums.yaml")
    env = project_env(folder)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run([str(BIN / "dvc"), "init", "-q"], repo, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "project"], repo, env)
    return repo


def copy_project(template: Path, folder: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the template repo (and its mirror and checksums) in `folder`, an empty store folder;
    returns the repo and its environment (`project_env(folder)`)."""
    source = template.parent
    repo = folder / "project"
    # symlinks=True: a link stays a link; .dvc/tmp is DVC's scratch (locks, updater state), made anew
    shutil.copytree(
        template, repo, symlinks=True, ignore=lambda where, names: ["tmp"] if Path(where) == template / ".dvc" else []
    )
    shutil.copytree(source / "mirror", folder / "mirror")
    shutil.copy(source / "checksums.yaml", folder / "checksums.yaml")
    (folder / "store").mkdir()
    for config in (repo / ".git" / "config", repo / ".dvc" / "config"):
        assert str(source) not in config.read_text(), f"{config} names the template's folder {source}"
    return repo, project_env(folder)
