"""The docs cannot drift: every console example in README.md and docs/*.md runs here, its output checked.

How examples are written and compared: tests/support/docs_examples.py. Each page runs in its own copy of
one tiny project on synthetic MNIST where `dvc repro` already ran (where the quick start leaves a reader).
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support.docs_examples as docs
from support.params import TINY_PARAMS

CONSOLE_PAGES = [page for page in docs.PAGES if any(block.lang == "console" for block in docs.blocks(page))]

pytestmark = pytest.mark.docs  # the console examples run dvc repro and each page's commands: tier `docs`


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def page_id(page: Path) -> str:
    return str(page.relative_to(docs.ROOT))


@pytest.fixture(scope="session")
def docs_project(tmp_path_factory, empty_mlflow_db: Path) -> tuple[Path, dict]:
    venv = Path(sys.executable).parent.parent
    started, cpu = time.monotonic(), _children_cpu()
    made = docs.make_base_project(tmp_path_factory.mktemp("docs-base"), venv, TINY_PARAMS, empty_mlflow_db)
    print(f"{time.monotonic() - started:6.1f} s ({_children_cpu() - cpu:5.1f} s CPU)  the docs' project: dvc repro")
    return made


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=page_id)
def test_console_examples(page: Path, docs_project, tmp_path: Path) -> None:
    repo, env = docs.copy_project(*docs_project, tmp_path)
    commands = [
        command for block in docs.blocks(page) if block.lang == "console" for command in docs.console_commands(block)
    ]
    failures = []
    for command in commands:
        started, cpu = time.monotonic(), _children_cpu()
        if problem := docs.check_command(command, repo, env):
            failures.append(problem)
        print(
            f"{time.monotonic() - started:6.1f} s ({_children_cpu() - cpu:5.1f} s CPU)  {command.where}  "
            f"$ {command.text.splitlines()[0]}"
        )  # shown with -s
    assert not failures, f"{len(failures)} of {len(commands)} examples differ from what they print:\n\n" + "\n\n".join(
        failures
    )


@pytest.mark.parametrize("page", docs.PAGES, ids=page_id)
def test_commands_that_do_not_run_here_are_valid(page: Path) -> None:
    problems = [
        f"{page_id(page)}:{line}: {' '.join(words)}: {problem}"
        for block in docs.blocks(page)
        if block.lang in ("bash", "sh", "shell")
        for line, words in docs.simple_commands(block)
        if (problem := docs.static_problem(words))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", docs.PAGES, ids=page_id)
def test_shown_commands_are_in_console_or_bash_blocks(page: Path) -> None:
    """A `$ ` prompt outside a console block would never run, and could drift."""
    stray = [
        f"{page_id(page)}:{block.line}: a ```{block.lang or '(no language)'} block shows `$ ` commands; "
        "make it ```console (run and checked) or ```bash (without output)"
        for block in docs.blocks(page)
        if block.lang != "console" and any(line.startswith("$ ") for line in block.lines)
    ]
    assert not stray, "\n".join(stray)


# --- the harness itself -------------------------------------------------------------------------


def example(text: str, tmp_path: Path) -> list[docs.Command]:
    page = docs.ROOT / "docs" / "example.md"  # only named, never written
    return docs.console_commands(docs.Block(page, 1, "console", text.splitlines()))


def check(text: str, tmp_path: Path) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"}
    return [problem for command in example(text, tmp_path) if (problem := docs.check_command(command, tmp_path, env))]


def test_a_wrong_output_fails(tmp_path: Path) -> None:
    assert check("$ echo evaluate: test accuracy 0.3120\nevaluate: test accuracy 0.9857", tmp_path) == []
    [problem] = check("$ echo evaluate: test accuracy 0.3120\nevaluate: test loss 0.9857", tmp_path)
    assert "expected line 1 not found: 'evaluate: test loss 0.9857'" in problem
    assert "evaluate: test accuracy 0.3120" in problem  # the actual output, for the fix


def test_missing_and_extra_lines_fail(tmp_path: Path) -> None:
    assert check("$ printf 'a\\nb\\n'\na", tmp_path)  # a line printed but not shown
    assert check("$ printf 'a\\n'\na\nb", tmp_path)  # a line shown but not printed
    assert check("$ printf 'a\\nb\\nc\\n'\na\n...\nc", tmp_path) == []
    assert check("$ printf 'a\\nb\\nc\\n'\n...\nc", tmp_path) == []
    assert check("$ printf 'a\\nb\\nc\\n'\na\n...", tmp_path) == []
    assert check("$ printf 'a\\nb\\nc\\n'\n...\nd", tmp_path)


def test_exit_status_must_fit_the_shown_output(tmp_path: Path) -> None:
    [problem] = check("$ echo done; false\ndone", tmp_path)
    assert "exited 1" in problem
    [problem] = check("$ echo 'train: error: bad'\ntrain: error: bad", tmp_path)
    assert "exited 0, but the page shows an error" in problem
    assert check("$ echo 'train: error: bad' >&2; exit 1\ntrain: error: bad", tmp_path) == []
    assert check('$ false; echo "exit $?"\nexit 1', tmp_path) == []
    assert check("$ echo 'x: error: bad'; false; echo \"exit $?\"\nx: error: bad\nexit 1", tmp_path) == []
    assert check('$ false; echo "exit $?"\nexit 2', tmp_path)  # an exit status is not a figure


def test_state_and_continuations(tmp_path: Path) -> None:
    text = "$ echo one \\\n    two > file.txt\n$ cat file.txt\none two"
    [write, read] = example(text, tmp_path)
    assert write.text == "echo one \\\n    two > file.txt" and write.expected == []
    assert check(text, tmp_path) == []


def test_normalize_keeps_words_and_drops_figures() -> None:
    shown = "train: 784-512-512-10 relu MLP, 669,706 parameters, on cpu"
    assert docs.normalize(shown) == docs.normalize("train: 784-32-10 relu MLP, 25,450 parameters, on cpu")
    assert docs.normalize(shown) != docs.normalize("train: 784-32-10 tanh MLP, 25,450 parameters, on cpu")
    assert docs.normalize("MLflow run 7eecce6fc356480bb051a8223df5bbfc") == "MLflow run <hex>"
    assert docs.normalize(
        "| main   | 0.9857 |",
    ) == docs.normalize("| main | 1 |")
    assert docs.normalize("|------|----|") == docs.normalize("|--|---------|")
    assert (
        docs.normalize("store /tmp/x/mnist-mlp/mlflow.db", "/tmp/x/mnist-mlp") == f"store {docs.SHOWN_ROOT}/mlflow.db"
    )
    assert docs.normalize("a deadbeef word") == "a deadbeef word"  # hex needs a digit
    assert docs.normalize("HEAD (1234567)") == docs.normalize("HEAD (9767ced)")  # a short sha of digits only
    assert docs.normalize("p 0.6843739151954651, 12345678.5") == docs.normalize("p 1.0, 2")


def test_static_checks_catch_wrong_commands(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    block = docs.Block(
        page,
        1,
        "bash",
        [
            "make repro && make no-such-target   # a comment",
            "MNIST_MIRROR=x mnist-mlp predict --no-such-option a.png",
            "dvc exp run -n tutorial $(mnist-mlp preset tutorial)",
            "dvc exp shwo",
            "mnist-mlp sweep --activations relu \\",
            "    --dropouts 0.2",
        ],
    )
    commands = docs.simple_commands(block)
    assert [words[:2] for _, words in commands] == [
        ["make", "repro"],
        ["make", "no-such-target"],
        ["mnist-mlp", "predict"],
        ["dvc", "exp"],
        ["dvc", "exp"],
        ["mnist-mlp", "sweep"],
    ]
    verdicts = [docs.static_problem(words) for _, words in commands]
    assert verdicts[0] is None and verdicts[3] is None and verdicts[5] is None
    assert "no Makefile target no-such-target" in verdicts[1]
    assert "refuses" in verdicts[2] and "refuses" in verdicts[4]


def test_the_docs_project_is_a_committed_repro(docs_project) -> None:
    repo, env = docs_project
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout.strip() == "{}", status.stdout + status.stderr
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""


def anchors(page: Path) -> set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = [
        line.lstrip("#").strip()
        for block_free in [_without_code(page.read_text())]
        for line in block_free.splitlines()
        if re.match(r"#{1,6} ", line)
    ]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _without_code(text: str) -> str:
    return re.sub(r"^(```+|~~~+).*?^\1\s*$", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", docs.PAGES, ids=page_id)
def test_relative_links_point_to_files_and_headings(page: Path) -> None:
    problems = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
        if "://" in target:
            continue
        linked = (page.parent / target) if target else page
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}#{anchor}: no such heading in {linked.name}")
    assert not problems, f"{page_id(page)} links to: " + "; ".join(problems)


@pytest.mark.parametrize("page", docs.PAGES, ids=page_id)
def test_commands_named_in_the_text_exist(page: Path) -> None:
    problems = [
        f"{page_id(page)}:{line}: `{' '.join(words)}`: {problem}"
        for line, words in docs.inline_commands(page)
        if (problem := docs.mention_problem(words))
    ]
    assert not problems, "\n".join(problems)


def test_named_commands_are_checked() -> None:
    assert docs.mention_problem(["mnist-mlp", "predict"]) is None  # arguments may be left out
    assert docs.mention_problem(["dvc", "exp", "push"]) is None
    assert docs.mention_problem(["dvc", "queue", "remove", "--queued"]) is None
    assert "no subcommand 'predikt'" in docs.mention_problem(["mnist-mlp", "predikt"])
    assert "no subcommand 'shwo'" in docs.mention_problem(["dvc", "exp", "shwo"])
    assert "no option --drop-all" in docs.mention_problem(["dvc", "exp", "show", "--drop-all"])
    assert "no Makefile target" in docs.mention_problem(["make", "no-such-target"])


def test_a_link_to_a_missing_heading_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Mistakes: a typo, or a value\n\n```bash\n# not a heading\n```\n")
    assert anchors(page) == {"title", "mistakes-a-typo-or-a-value"}
