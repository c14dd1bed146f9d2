"""The metric gate: reports/metrics.json against a baseline, under the rules in metrics_rules.yaml.

`dvc metrics diff` shows differences but always exits 0; this turns them into a verdict.
A rule names a metric by its dotted path in metrics.json (`test.accuracy`; `*` stands for
every key at one level, `test.per_class.*.recall`) and sets what counts as worse:

    better: higher | lower     the direction of improvement (needed for a baseline comparison)
    abs_tolerance: 0.002       a worse value passes while the change stays within
    rel_tolerance: 0.1         max(abs_tolerance, rel_tolerance * |baseline|); none given = 0
    floor: 0.984               the value must be >= floor, baseline or not
    ceiling: 0.1               the value must be <= ceiling

The baseline is the metrics file as committed at a git revision (default `main`), or a file.
With no baseline yet (the first commit) only floors and ceilings apply.

Where the baseline's per-digit predictions are at hand too (predictions.csv beside the metrics file, at
the same revision), the two models are paired on the same test digits: exact McNemar on the digits one
got right and the other wrong. A drop beyond noise fails the gate whatever the tolerances say; the
tolerances still absorb another CPU's float noise.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mnist_mlp.errors import UserError
from mnist_mlp.files import read_yaml
from mnist_mlp.tracking import predictions
from mnist_mlp.verdicts import stats

PREDICTIONS = "predictions.csv"  # beside the metrics file, as the evaluate stage writes them

WILDCARD = "*"


class GateError(UserError, ValueError):
    """A metrics, baseline or rules file the gate cannot use."""


class MetricsRegressed(UserError):
    """The new metrics broke a rule; the message names each broken one."""


class MetricRule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    better: Literal["higher", "lower"] | None = None
    abs_tolerance: float | None = Field(default=None, ge=0)
    rel_tolerance: float | None = Field(default=None, ge=0)
    floor: float | None = None
    ceiling: float | None = None

    @field_validator("abs_tolerance", "rel_tolerance", "floor", "ceiling", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: Any) -> Any:
        # YAML reads `floor: 1` as an int; strict mode would refuse it as a float.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self) -> MetricRule:
        if self.better is None and (self.abs_tolerance is not None or self.rel_tolerance is not None):
            raise ValueError("a tolerance needs 'better: higher' or 'better: lower'")
        if self.better is None and self.floor is None and self.ceiling is None:
            raise ValueError("a rule needs 'better' (compare with the baseline), 'floor' or 'ceiling'")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor {self.floor} is above ceiling {self.ceiling}")
        return self

    def allowed_worsening(self, baseline: float) -> float:
        return max(self.abs_tolerance or 0.0, (self.rel_tolerance or 0.0) * abs(baseline))


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    metrics: dict[str, MetricRule] = Field(min_length=1)

    @field_validator("metrics")
    @classmethod
    def _paths(cls, metrics: dict[str, MetricRule]) -> dict[str, MetricRule]:
        for path in metrics:
            parts = path.split(".")
            if any(not part or (WILDCARD in part and part != WILDCARD) for part in parts):
                raise ValueError(
                    f"bad metric path {path!r}: expected dotted keys such as test.accuracy, "
                    f"'{WILDCARD}' standing alone for every key at one level"
                )
        return metrics


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    raw = read_yaml(path, GateError, "rules file")
    try:
        return Rules.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = [
            f"{path}: {'.'.join(str(part) for part in error['loc']) or 'top level'}: "
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        ]
        raise GateError("\n".join(problems)) from None


def parse_metrics(text: str, source: str) -> dict:
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GateError(
            f"{source}: not valid JSON ({exc}); expected the metrics written by the evaluate stage"
        ) from None
    if not isinstance(metrics, dict):
        raise GateError(f"{source}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return metrics


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GateError(f"{path}: metrics file not found; run `dvc repro` (or `make repro`) first") from None
    return parse_metrics(text, str(path))


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise GateError("git not found on PATH; install git or pass --baseline FILE") from None


def read_baseline_from_git(rev: str, metrics_path: str | Path) -> tuple[dict | None, str]:
    """(metrics committed at `rev`, "rev:path"); None when there are none yet (no commits, or not in `rev`)."""
    text, source = _committed(rev, metrics_path)
    return (None if text is None else parse_metrics(text, source)), source


def _committed(rev: str, file: str | Path) -> tuple[str | None, str]:
    """(the file's text as committed at `rev` or None, "rev:path")."""
    path = Path(file).resolve()
    folder = path.parent if path.parent.is_dir() else Path.cwd()
    top = _git(["rev-parse", "--show-toplevel"], folder)
    if top.returncode != 0:
        raise GateError(f"{folder}: not inside a git repository; pass --baseline FILE to compare with a file")
    try:
        relative = path.relative_to(Path(top.stdout.strip()).resolve()).as_posix()
    except ValueError:
        raise GateError(f"{path}: outside the git repository {top.stdout.strip()}; pass --baseline FILE") from None
    source = f"{rev}:{relative}"
    if _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], folder).returncode != 0:
        if _git(["rev-parse", "--verify", "--quiet", "HEAD"], folder).returncode != 0:
            return None, source  # a repository without commits: nothing to compare with yet
        raise GateError(
            f"unknown git revision {rev!r}; pass --baseline-rev with a branch, tag or commit (e.g. origin/main)"
        )
    shown = _git(["show", source], folder)
    if shown.returncode != 0:
        return None, source  # the file is not committed at that revision yet
    return shown.stdout, source


def _sort_key(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def expand(pattern: str, metrics: dict, source: str) -> dict[str, float]:
    """Concrete dotted names and their values for one rule's path; a missing metric is an error."""
    found: dict[str, Any] = {"": metrics}
    for part in pattern.split("."):
        step: dict[str, Any] = {}
        for prefix, node in found.items():
            where = prefix or "the top level"
            if not isinstance(node, dict):
                raise GateError(f"{source}: no metric '{pattern}' ({where} is a value, not an object)")
            keys = sorted(node, key=_sort_key) if part == WILDCARD else [part]
            if part == WILDCARD and not keys:
                raise GateError(f"{source}: no metric '{pattern}' ({where} is empty)")
            for key in keys:
                if key not in node:
                    raise GateError(f"{source}: no metric '{pattern}' (no key '{key}' under {where})")
                step[f"{prefix}.{key}" if prefix else key] = node[key]
        found = step
    for name, value in found.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GateError(f"{source}: metric '{name}' is {value!r}, expected a finite number")
    return {name: float(value) for name, value in found.items()}


def lookup(name: str, metrics: dict) -> float | None:
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


@dataclass
class Row:
    metric: str
    baseline: float | None
    new: float
    verdict: str = "ok"
    failures: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        if self.baseline is None:
            return [self.metric, "—", f"{self.new:.4f}", "—", self.verdict]
        change = self.new - self.baseline
        relative = f" ({change / abs(self.baseline):+.2%})" if self.baseline else ""
        return [self.metric, f"{self.baseline:.4f}", f"{self.new:.4f}", f"{change:+.4f}{relative}", self.verdict]


def _exceeds(amount: float, limit: float) -> bool:
    # 0.9857 - 0.9837 is 0.0020000000000000018 in floats: exactly at the tolerance still passes
    return amount > limit and not math.isclose(amount, limit, rel_tol=1e-9, abs_tol=1e-12)


def judge(name: str, rule: MetricRule, new: float, baseline: float | None, new_metric: bool = False) -> Row:
    """`new_metric`: the baseline file exists but lacks this metric, so only bounds apply."""
    row = Row(name, baseline, new)
    notes = ["new metric, not in the baseline"] if new_metric else []
    if rule.better is not None and baseline is not None:
        worse_by = (baseline - new) if rule.better == "higher" else (new - baseline)
        allowed = rule.allowed_worsening(baseline)
        if _exceeds(worse_by, allowed):
            notes.append(f"REGRESSION: worse by {worse_by:.4f}, tolerance {allowed:.4f}")
            row.failures.append(
                f"{name} regressed: {baseline:.4f} -> {new:.4f} (worse by {worse_by:.4f}, tolerance {allowed:.4f})"
            )
        elif worse_by < 0:
            notes.append("better")
        elif worse_by > 0:
            notes.append(f"ok (worse by {worse_by:.4f}, within {allowed:.4f})")
    if rule.floor is not None and new < rule.floor:
        notes.append(f"BELOW FLOOR {rule.floor:g}")
        row.failures.append(f"{name} is {new:.4f}, below its floor {rule.floor:g}")
    if rule.ceiling is not None and new > rule.ceiling:
        notes.append(f"ABOVE CEILING {rule.ceiling:g}")
        row.failures.append(f"{name} is {new:.4f}, above its ceiling {rule.ceiling:g}")
    row.verdict = "; ".join(notes) or "ok"
    if row.failures:
        row.verdict = f"**{row.verdict}**"
    return row


def check_rules(rules: Rules, metrics: dict, baseline: dict | None, source: str = "metrics") -> list[Row]:
    """One row per concrete metric, in rules order; every metric a rule names must be in `metrics`."""
    rows = []
    for pattern, rule in rules.metrics.items():
        for name, value in expand(pattern, metrics, source).items():
            old = lookup(name, baseline) if baseline is not None else None
            rows.append(judge(name, rule, value, old, new_metric=baseline is not None and old is None))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| metric | baseline | new | change | verdict |", "|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class GateReport:
    metrics_source: str
    baseline_source: str
    has_baseline: bool
    rows: list[Row]
    paired: stats.Paired | None = None  # new model against the baseline's, on the same test digits
    paired_source: str = ""  # where the baseline's predictions came from, or why there is no paired test

    @property
    def worse_beyond_noise(self) -> bool:
        return self.paired is not None and self.paired.first_is() == "worse"

    @property
    def failures(self) -> list[str]:
        failures = [failure for row in self.rows for failure in row.failures]
        if self.worse_beyond_noise:
            failures.append(f"test digits: worse beyond noise against {self.paired_source}: {self.paired_line()}")
        return failures

    def paired_line(self) -> str:
        found = self.paired
        return (
            f"{found.only_first} digits right only in the new model, {found.only_second} only in the baseline: "
            f"{found.digits:+d} of {found.total:,} ({100 * found.accuracy_difference:+.2f} points, 95 % "
            f"{found.difference.points()}), exact McNemar {stats.p_text(found.p_value)}"
        )

    def markdown(self) -> str:
        if self.has_baseline:
            against = f"against `{self.baseline_source}`"
        else:
            against = f"no baseline yet (`{self.baseline_source}` does not exist): only floors and ceilings apply"
        if self.paired is not None:
            verdict = {"worse": "worse beyond noise", "level": "level within noise", "better": "better beyond noise"}[
                self.paired.first_is()
            ]
            paired = (
                f"Paired on the same test digits against `{self.paired_source}`: {self.paired_line()}: **{verdict}**."
            )
        else:
            paired = f"No paired test: {self.paired_source}."
        if self.failures:
            outcome = f"**FAIL**: {len(self.failures)} broken rule(s) in {len(self.rows)} metrics"
        else:
            outcome = f"**PASS**: {len(self.rows)} metrics, no regression, every floor and ceiling held"
        return "\n".join(
            [
                f"### Metric gate: `{self.metrics_source}`, {against}",
                "",
                markdown_table(self.rows),
                "",
                paired,
                "",
                outcome,
            ]
        )


def run_gate(
    metrics_path: str | Path,
    rules_path: str | Path,
    baseline_path: str | Path | None = None,
    baseline_rev: str = "main",
) -> GateReport:
    """Load everything, refuse unusable input, and judge every metric the rules name."""
    rules = load_rules(rules_path)
    metrics = load_metrics(metrics_path)
    if baseline_path is not None:
        baseline, baseline_source = load_metrics(baseline_path), str(baseline_path)
    else:
        baseline, baseline_source = read_baseline_from_git(baseline_rev, metrics_path)
    rows = check_rules(rules, metrics, baseline, str(metrics_path))
    paired, paired_source = _paired(metrics_path, baseline_path, baseline_rev, metrics, baseline)
    return GateReport(str(metrics_path), baseline_source, baseline is not None, rows, paired, paired_source)


def _scored(found: predictions.Predictions, source: str, metrics: dict, metrics_source: str) -> predictions.Predictions:
    """`found`, once it scores the test accuracy of the metrics beside it: two files of one run agree to the digit."""
    accuracy = metrics.get("test", {}).get("accuracy")
    if not isinstance(accuracy, (int, float)) or abs(float(found.correct.mean()) - accuracy) > 1e-6 + 0.5 / len(
        found.actual
    ):
        raise GateError(
            f"{source} scores {found.correct.mean():.4f}, not {metrics_source}'s test accuracy {accuracy}: "
            "the predictions and the metrics are not of one run"
        )
    return found


def _paired(
    metrics_path: str | Path, baseline_path: str | Path | None, baseline_rev: str, metrics: dict, baseline: dict | None
) -> tuple[stats.Paired | None, str]:
    """The new predictions against the baseline's (beside each metrics file, each checked to score its metrics'
    test accuracy), or None and why not."""
    new_path = Path(metrics_path).parent / PREDICTIONS
    if baseline is None:
        return None, "no baseline"
    if not new_path.is_file():
        return None, f"{new_path} not found"
    new = _scored(predictions.read(new_path), str(new_path), metrics, str(metrics_path))
    if baseline_path is not None:
        old_path = Path(baseline_path).parent / PREDICTIONS
        if not old_path.is_file():
            return None, f"no {old_path} beside the baseline"
        if old_path.resolve() == new_path.resolve():  # both files in one folder: one predictions file for both
            return None, f"the baseline and the new metrics share one folder, so {new_path} cannot stand for both"
        old, source = _scored(predictions.read(old_path), str(old_path), baseline, str(baseline_path)), str(old_path)
    else:
        text, source = _committed(baseline_rev, new_path)
        if text is None:
            return None, f"{source} is not committed"
        if len(text) > predictions.MAX_BYTES:
            raise predictions.PredictionsError(f"{source}: {len(text):,} characters, more than a predictions file")
        old = _scored(
            predictions.parse(text, source), source, baseline, f"{baseline_rev}:{Path(metrics_path).as_posix()}"
        )
    if len(new.actual) != len(old.actual) or (new.actual != old.actual).any():
        return None, f"{new_path} and {source} hold different test digits"
    return stats.paired(new.correct, old.correct), source
