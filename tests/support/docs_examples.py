"""The docs' examples as tests: every ```console block in README.md and docs/*.md is run, its output checked.

A console block holds commands (lines starting with `$ `; a line ending in `\\` continues on the
next) each followed by the output it prints, stdout and stderr together. The blocks of one page run
in order in one project (state carries over as it does for a reader), each command in a fresh bash.

Output is compared after normalizing both sides (`normalize`): every number is `<n>`, every hex
hash `<hex>`, the project's folder `/path/to/mnist-mlp`, runs of spaces and of table rules one;
so a real-MNIST figure (0.9857) matches a tiny synthetic run's (0.3120) while every word must match.
A line `...` stands for any number of lines, `...` inside a line for any text. A command whose shown
output has an `error:` or `ERROR:` line must exit non-zero, every other command zero; show an exit
code explicitly with `; echo "exit $?"` where it matters: a last line `exit N` is compared as it is
(and replaces the zero/non-zero rule).

```bash blocks hold commands that cannot run in a test (servers, real MNIST, long sweeps); they are
checked without running: `mnist-mlp ...` parses with the CLI's own parser, `dvc ...` with DVC's,
and `make X` names a Makefile target.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from support.mnist_files import write_checksums, write_tiny_mnist
from support.paths import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHOWN_ROOT = "/path/to/mnist-mlp"  # what the docs show for the project's folder
COMMAND_TIMEOUT_S = 300


@dataclass
class Command:
    page: Path
    line: int  # 1-based line of the `$ ` in the page
    text: str  # as typed: continuation lines joined with their `\` and newline
    expected: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page (``` or ~~~ fences, any indentation)."""
    found, current, fence = [], None, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.strip()
        if current is None:
            match = re.fullmatch(r"(```+|~~~+)\s*([^`]*)", stripped)  # a backtick fence's info has no backtick
            if match:
                fence = match.group(1)
                current = Block(page, number, (match.group(2).split() or [""])[0].lower(), [])
                indent = len(line) - len(line.lstrip())
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":  # as long as the opening, or longer
            found.append(current)
            current = None
        else:
            current.lines.append(line[indent:] if line[:indent].strip() == "" else line)
    if current is not None:
        raise ValueError(f"{page.relative_to(ROOT)}:{current.line}: code block never closed")
    return found


def console_commands(block: Block) -> list[Command]:
    """The `$ ` commands of a console block with the output lines shown after each."""
    commands: list[Command] = []
    continuing = False
    for offset, line in enumerate(block.lines, 1):
        if continuing:
            commands[-1].text += "\n" + line
        elif line.startswith("$ "):
            commands.append(Command(block.page, block.line + offset, line[2:]))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"{block.page.relative_to(ROOT)}:{block.line + offset}: output before any `$ ` command")
        continuing = (line.startswith("$ ") or continuing) and line.endswith("\\")
    return commands


_HEX = re.compile(r"(?<![\w.])(?=[0-9a-f]*\d)[0-9a-f]{7,}\b(?!\.\d)")  # a git sha may be all digits, a word all letters
_NUMBER = re.compile(r"(?<![\w.])[-+]?(\d[\d,]*(\.\d+)?|\.\d+)([eE][-+]?\d+)?")  # 3.4s, 89.4%, 1e+30
_EXIT = re.compile(r"exit \d+")  # `; echo "exit $?"`: an exit status is compared as it is
_RULE = re.compile(r"([-─━═]){2,}")


def normalize(line: str, root: str | Path | None = None) -> str:
    """One output line as compared: see the module's docstring."""
    if _EXIT.fullmatch(line.strip()):
        return line.strip()
    if root:  # the project, and the venv its `.venv` links to (what `source .venv/bin/activate` puts on PATH)
        venv = (Path(root) / ".venv").resolve()
        line = line.replace(f"{venv}/", f"{SHOWN_ROOT}/.venv/").replace(str(root), SHOWN_ROOT)
    line = _HEX.sub("<hex>", line)
    line = _NUMBER.sub("<n>", line)
    # a net's shape (784-512-512-10 vs 784-32-10), a range (0..9), a list of sizes
    line = re.sub(r"<n>(?:(?:-|\.\.|, ?|x|×)<n>)+", "<n>", line)
    line = _RULE.sub(r"\1\1\1", line)
    return re.sub(r"\s+", " ", line).strip()


def _line_pattern(expected: str) -> re.Pattern:
    parts = [re.escape(part) for part in normalize(expected).split("...")]
    return re.compile(".*".join(parts))


def output_mismatch(expected: list[str], actual: list[str], root: str | Path | None = None) -> str | None:
    """None when `actual` matches the shown `expected` lines; else a short explanation."""
    want = [line for line in expected if line.strip()]
    got = [normalize(line, root) for line in actual if line.strip()]
    patterns = [None if line.strip() == "..." else _line_pattern(line) for line in want]
    memo: dict[tuple[int, int], bool] = {}
    best = [0, 0]  # the furthest expected line matched, for the message

    def match(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i > best[0]:
            best[:] = [i, j]
        if i == len(patterns):
            result = j == len(got)
        elif patterns[i] is None:
            result = any(match(i + 1, k) for k in range(j, len(got) + 1))
        else:
            result = j < len(got) and patterns[i].fullmatch(got[j]) is not None and match(i + 1, j + 1)
        memo[i, j] = result
        return result

    if match(0, 0):
        return None
    i, j = best
    if i < len(want):
        return (
            f"expected line {i + 1} not found: {want[i]!r}\n  normalized: {normalize(want[i])!r}\n"
            f"  next actual line (normalized): {got[j] if j < len(got) else '<end of output>'!r}"
        )
    return f"output has more lines than shown, from: {got[j]!r}"


def expects_failure(expected: list[str]) -> bool:
    return any(re.search(r"(?i)(^|\s|:)error:", line) for line in expected)


# --- the project a page runs in ---------------------------------------------------------------


def tiny_params_yaml(text: str, overrides: dict) -> str:
    """params.yaml with `overrides` applied, its comments and layout kept (as DVC's -S keeps them)."""
    from io import StringIO

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    yaml = YAML()
    yaml.representer.add_representer(
        type(None), lambda self, _: self.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = yaml.load(text)
    for section, values in overrides.items():
        for key, value in values.items():
            if isinstance(value, list):  # in the file's flow style: [32] as [512, 512]
                value = CommentedSeq(value)
                value.fa.set_flow_style()
            data[section][key] = value
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def project_files() -> list[str]:
    """What a clone holds: the repo's tracked and new files, without tests and ignored paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    return [name for name in listed if not name.startswith("tests/") and (ROOT / name).is_file()]


def environment(repo: Path, mirror: Path, checksums: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DVC_", "MLFLOW_", "PYTEST_", "MNIST_"))
        # under `make test` these would make a documented `make X` print "Entering directory" lines
        and key not in ("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    }
    env.update(
        {
            "PATH": f"{repo / '.venv' / 'bin'}{os.pathsep}{env['PATH']}",
            "MNIST_MIRROR": str(mirror),
            "MNIST_OFFICIAL_MIRRORS": "none",  # never the network
            "MNIST_CHECKSUMS": str(checksums),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",  # stdout and stderr interleaved as they happen
            "GIT_AUTHOR_NAME": "docs",
            "GIT_AUTHOR_EMAIL": "docs@example.com",
            "GIT_COMMITTER_NAME": "docs",
            "GIT_COMMITTER_EMAIL": "docs@example.com",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "COLUMNS": "200",
        }
    )
    return env


def make_base_project(
    folder: Path, venv: Path, tiny_params: dict, empty_store: Path | None = None
) -> tuple[Path, dict]:
    """A clone of this project on tiny synthetic MNIST after `dvc repro`, committed: where a reader
    of the docs stands after the quick start. Returns the repo and its environment."""
    repo = folder / "mnist-mlp"
    for name in project_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    # the committed defaults: an experiment applied in this workspace may have changed the file
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    defaults = committed.stdout if committed.returncode == 0 else (ROOT / "params.yaml").read_text()
    (repo / "params.yaml").write_text(tiny_params_yaml(defaults, tiny_params))
    # make never reinstalls into the shared venv: its `.installed` stamp is newer than these, its prerequisites
    for prerequisite in ("pyproject.toml", "requirements/lock.txt"):
        os.utime(repo / prerequisite, (0, 0))
    (repo / ".venv").symlink_to(venv)
    if empty_store:  # an MLflow schema migration takes 10-15 s
        shutil.copy(empty_store, repo / "mlflow.db")
    mirror = write_tiny_mnist(folder / "mirror")
    checksums = write_checksums(mirror, folder / "checksums.yaml")
    env = environment(repo, mirror, checksums)

    def run(*cmd: str) -> None:
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    # a `make X` in the docs must never reinstall the venv from this copy (an editable install of a temp folder)
    stamp = subprocess.run(["make", "-q", ".venv/.installed"], cwd=repo, env=env, capture_output=True)
    if stamp.returncode != 0:
        raise AssertionError(
            f"{venv}/.installed is missing: make the venv with `make install` before running the docs tests"
        )
    run("git", "init", "-q", "-b", "main")
    (repo / ".git" / "info" / "exclude").write_text("/.venv\n")  # a symlink, which `/.venv/` does not match
    run("git", "add", "-A")
    run("git", "commit", "-qm", "mnist-mlp")
    run("dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "dvc repro")
    return repo, env


def copy_project(base: Path, base_env: dict, folder: Path) -> tuple[Path, dict]:
    """A copy of the base project in `folder`, its MLflow store's absolute paths moved along."""
    repo = folder / base.name
    shutil.copytree(base, repo, symlinks=True)
    old, new = str(base), str(repo)
    database = repo / "mlflow.db"
    if database.exists():
        with sqlite3.connect(database) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for column in connection.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if column[2].upper().startswith(("VARCHAR", "TEXT")):
                        connection.execute(
                            f'UPDATE "{table}" SET "{column[1]}" = REPLACE("{column[1]}", ?, ?) '
                            f'WHERE "{column[1]}" LIKE ?',
                            (old, new, f"%{old}%"),
                        )
    env = {key: value.replace(old, new) for key, value in base_env.items()}
    return repo, env


@dataclass
class Result:
    code: int
    output: str


def run_command(command: Command, repo: Path, env: dict) -> Result:
    try:
        done = subprocess.run(
            ["bash", "-c", command.text],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        return Result(-1, f"timed out after {COMMAND_TIMEOUT_S} s\n{exc.output or ''}")
    return Result(done.returncode, done.stdout)


def check_command(command: Command, repo: Path, env: dict) -> str | None:
    """Run one shown command; None when its exit status and output are as the page shows."""
    result = run_command(command, repo, env)
    shown = [line.strip() for line in command.expected if line.strip()]
    explicit = bool(shown) and _EXIT.fullmatch(shown[-1]) is not None  # `; echo "exit $?"` shows the status
    failing = expects_failure(command.expected) and not explicit
    if failing and result.code == 0:
        problem = "exited 0, but the page shows an error"
    elif not failing and result.code != 0:
        problem = f"exited {result.code}"
    else:
        problem = output_mismatch(command.expected, result.output.splitlines(), str(repo))
    if problem is None:
        return None
    return f"{command.where}: $ {command.text}\n{problem}\n--- actual output ---\n{result.output}"


# --- commands checked without running ---------------------------------------------------------


def simple_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, words) of each simple command in a bash block: comments, `&&`/`;`/`|` and leading
    VAR=value assignments removed; `$(...)` substitutions and `<placeholder>`s left as words."""
    found, text, start = [], "", None
    for offset, line in enumerate(block.lines, 1):
        start = start or block.line + offset
        if line.endswith("\\"):
            text += line[:-1] + " "
            continue
        text += line
        text = re.sub(r"\$\([^()]*\)", "", text)  # `$(mnist-mlp preset NAME)`: its own line is checked
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
        except ValueError as exc:
            raise ValueError(f"{block.page.relative_to(ROOT)}:{start}: {exc}: {text}") from None
        command: list[str] = []
        for word in [*words, ";"]:
            if word and set(word) <= set(";&|"):
                while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
                    command.pop(0)
                if command:
                    found.append((start, command))
                command = []
            else:
                command.append(word)
        text, start = "", None
    return found


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {
        target
        for line in text.splitlines()
        for target in (re.match(r"^([\w.-]+(?:\s+[\w.-]+)*)\s*:(?!=)", line) or [None, ""])[1].split()
    }


def static_problem(words: list[str]) -> str | None:
    """Why a command of a bash block would not run as written, or None."""
    program, args = words[0], words[1:]
    if program == "make":
        targets = [arg for arg in args if not arg.startswith("-") and "=" not in arg]
        unknown = [target for target in targets if target not in makefile_targets()]
        return f"no Makefile target {', '.join(unknown)}" if unknown else None
    if program in ("mnist-mlp", "dvc"):
        import contextlib
        import io
        import logging

        if program == "mnist-mlp":
            from mnist_mlp.cli import build_parser

            parser, refusals = build_parser(), (SystemExit,)
        else:
            from dvc.cli import DvcParserError
            from dvc.cli.parser import get_main_parser

            parser, refusals = get_main_parser(), (SystemExit, DvcParserError)
        messages = io.StringIO()
        handler = logging.StreamHandler(messages)  # DVC's parser logs its complaint
        logging.getLogger("dvc").addHandler(handler)
        try:
            with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except refusals as exc:
            if not isinstance(exc, SystemExit) or exc.code:
                complaint = [line for line in messages.getvalue().splitlines() if "error" in line.lower()]
                return f"{program} refuses these arguments: {complaint[-1] if complaint else exc!r}"
        finally:
            logging.getLogger("dvc").removeHandler(handler)
    return None


# --- commands named in the text -----------------------------------------------------------------


def inline_commands(page: Path) -> list[tuple[int, list[str]]]:
    """(line, words) of each `mnist-mlp ...`, `dvc ...` or `make ...` in inline code outside code blocks."""
    found, fence = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.strip()
        opening = re.fullmatch(r"(```+|~~~+)\s*([^`]*)", stripped)
        if fence is None and opening:
            fence = opening.group(1)
            continue
        if fence is not None:
            if stripped.startswith(fence) and stripped.strip(fence[0]) == "":
                fence = None
            continue
        for code in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
            if re.match(r"(mnist-mlp|dvc|make) ", code) and ": error:" not in code:  # not a quoted message
                block = Block(page, number - 1, "bash", [code])
                found += [(number, words) for _, words in simple_commands(block)]
    return found


def _subparser(parser, name: str):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name), sorted(action.choices)
    return None, []


def mention_problem(words: list[str]) -> str | None:
    """Why a command named in the text is not one: an unknown make target, subcommand or option.
    Its arguments may be left out (`mnist-mlp predict`, `dvc exp push`), so they are not parsed."""
    program, args = words[0], words[1:]
    if program == "make":
        return static_problem([word for word in words if not re.fullmatch(r"\.\.\.|<.*>|[A-Z_]+", word)])
    if program == "mnist-mlp":
        from mnist_mlp.cli import build_parser

        parser = build_parser()
    else:
        from dvc.cli.parser import get_main_parser

        parser = get_main_parser()
    path = [program]
    for word in args:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in parser._option_string_actions:
                return f"`{' '.join(path)}` has no option {option}"
            continue
        if re.fullmatch(r"\.\.\.|<.*>|[A-Z_]+", word):
            break  # a placeholder: `mnist-mlp ...`, `make X`
        sub, names = _subparser(parser, word)
        if sub is not None:
            parser = sub
            path.append(word)
        elif names:
            return f"`{' '.join(path)}` has no subcommand {word!r} (it has: {', '.join(names)})"
        else:
            break  # an argument: from here on, values
    return None
