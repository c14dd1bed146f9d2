"""`mnist-mlp promote`: a registered version becomes `<model>@champion` only when it passes the metric gate
and, on the same test digits, is better than the champion beyond noise.

The candidate is the version registered from one run (by default the run in reports/metrics.json, the
model the workspace evaluated last). Its run's metrics are judged against the current champion's run's
metrics under the gate's rules (metrics_rules.yaml), as `mnist-mlp check-metrics` does. Then both models,
verified file by file (tracking/model_check.py), are run on the local test split (data/processed/test.pt):
never a predictions file from the store, which anyone who can log a run could have written. A model that
does not score its run's logged test accuracy there is refused: the run's metrics are not that model's.
The two models' answers are paired: exact McNemar on the digits one got right and the other wrong. A
candidate worse beyond noise is refused; one level with the champion within noise (the same model with
another seed, say) is refused too unless `allow_level`, so that the alias does not flip back and forth on
noise. With no champion yet only floors and ceilings apply. Judging and moving happen under a lock, and
the alias is read again just before it moves: a promote that raced another is refused, never the later
one kept for being later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnist_mlp.errors import UserError
from mnist_mlp.tracking import loading, registry
from mnist_mlp.tracking.predictions import LocalTest
from mnist_mlp.verdicts import gate, stats

ACCURACY_TOLERANCE = 1e-4  # a model's accuracy on the test split against its run's logged one (float rounding only)


class PromotionRefused(UserError):
    """The candidate broke a rule against the champion, or is not better beyond noise; one line says which."""


@dataclass
class Promotion:
    candidate: registry.ModelVersion
    previous: registry.ModelVersion | None
    rows: list[gate.Row]
    alias: str
    moved: bool
    paired: stats.Paired | None = None  # candidate against the previous champion, on the same test digits

    def line(self) -> str:
        name, accuracy = self.candidate.name, _accuracy(self.rows)
        target = f"{name}@{self.alias}"
        if not self.moved:
            return f"promote: {target} is already version {self.candidate.version} (run {self.candidate.run_id}); nothing to do"
        if self.previous is None:
            against = f"the first {self.alias}: floors and ceilings held"
        else:
            against = f"passed the gate against version {self.previous.version} (run {self.previous.run_id})"
            # one test, candidate against champion: no multiplicity to correct
            verdict = (
                "better beyond noise"
                if self.paired.first_is() == "better"
                else "level within noise, promoted by --allow-level"
            )
            against += f", {verdict}: {paired_text(self.paired, self.previous.version)}"
        return (
            f"promote: {target} -> version {self.candidate.version} (run {self.candidate.run_id}{accuracy}); {against}"
        )


def _accuracy(rows: list[gate.Row]) -> str:
    row = next((row for row in rows if row.metric == "test.accuracy"), None)
    return f", test accuracy {row.new:.4f}" if row else ""


def paired_text(result: stats.Paired, other: str) -> str:
    """The counts both ways, the difference with its 95 % interval and the p-value, against version `other`."""
    return (
        f"{result.only_first} digits right only in the candidate, {result.only_second} only in version {other}: "
        f"{result.digits:+d} digits ({100 * result.accuracy_difference:+.2f} points, 95 % {result.difference.points()}), "
        f"exact McNemar {stats.p_text(result.p_value)}"
    )


def right_digits(name: str, version: registry.ModelVersion, test: LocalTest):
    """Which local test digits the version's verified model gets right; refused when it does not score its run's
    logged test accuracy there (another model's metrics, or another test split)."""
    import numpy as np

    correct = loading.predicted_digits(f"models:/{name}/{version.version}", test.pixels) == test.labels
    logged = registry.run_metrics(version.run_id).get("test_accuracy")
    if logged is None or not np.isclose(correct.mean(), logged, rtol=0, atol=ACCURACY_TOLERANCE):
        raise PromotionRefused(
            f"refused: {version.label}'s model scores {correct.mean():.4f} on {test.source}, not its run's "
            f"logged test accuracy {'(none)' if logged is None else f'{logged:.4f}'}: those metrics are not "
            "this model's on this test split"
        )
    return correct


def promote(
    name: str,
    rules_path: str | Path,
    run_id: str | None = None,
    version: str | None = None,
    alias: str = registry.CHAMPION,
    allow_level: bool = False,
    test: LocalTest | None = None,
) -> Promotion:
    """Judge the candidate against `name@alias` and move the alias to it when no rule breaks and, run on the local
    `test` digits, it is better beyond noise (or level, with `allow_level`)."""
    rules = gate.load_rules(rules_path)
    candidate = registry.model_version(name, version) if version else registry.version_of_run(name, run_id or "")
    with registry.alias_lock(name, alias):
        champion = registry.alias_version(name, alias)
        metrics = registry.metrics_tree(registry.run_metrics(candidate.run_id))
        if champion is not None and champion.version == candidate.version:
            return Promotion(
                candidate, champion, gate.check_rules(rules, metrics, None, candidate.label), alias, moved=False
            )
        baseline = registry.metrics_tree(registry.run_metrics(champion.run_id)) if champion else None
        rows = gate.check_rules(rules, metrics, baseline, candidate.label)
        failures = [failure for row in rows for failure in row.failures]
        against = f"against {name}@{alias} = version {champion.version}" if champion else "with no champion yet"
        if failures:
            raise PromotionRefused(f"refused: {candidate.label} stays out, {against}: {'; '.join(failures)}")
        result = _judged(name, candidate, champion, against, test, allow_level)
        now = registry.alias_version(name, alias)
        if (now and now.version) != (champion and champion.version):
            raise PromotionRefused(
                f"refused: {name}@{alias} moved to version {now.version if now else '(none)'} while "
                f"{candidate.label} was judged {against}; run promote again"
            )
        registry.set_alias(name, alias, candidate.version)
    return Promotion(candidate, champion, rows, alias, moved=True, paired=result)


def _judged(
    name: str,
    candidate: registry.ModelVersion,
    champion: registry.ModelVersion | None,
    against: str,
    test: LocalTest | None,
    allow_level: bool,
) -> stats.Paired | None:
    """The candidate's and the champion's models run on the test digits and paired; refused unless better (or level,
    with `allow_level`). None where there is no champion."""
    mine = right_digits(name, candidate, test) if test is not None else None
    if champion is None:
        return None
    if test is None or mine is None:
        raise PromotionRefused(
            f"refused: {candidate.label} stays out, {against}: no local test split to run both models "
            "on (data/processed/test.pt: `dvc repro preprocess` makes it)"
        )
    result = stats.paired(mine, right_digits(name, champion, test))
    if result.first_is() == "worse":
        raise PromotionRefused(
            f"refused: {candidate.label} is worse beyond noise {against}: {paired_text(result, champion.version)}"
        )
    if not allow_level and result.first_is() == "level":
        raise PromotionRefused(
            f"refused: {candidate.label} is level within noise: keeping version {champion.version} "
            f"({paired_text(result, champion.version)}); --allow-level promotes a level candidate"
        )
    return result
