"""`mnist-mlp promote`: a registered version becomes `<model>@champion` only when it passes the metric gate
and, on the same test digits, is better than the champion beyond noise.

The candidate is the version registered from one run (by default the run in reports/metrics.json, the
model the workspace evaluated last). Its run's metrics are judged against the current champion's run's
metrics under the gate's rules (metrics_rules.yaml), as `mnist-mlp check-metrics` does. Then the two runs'
per-digit predictions (evaluation/predictions.csv) are paired: exact McNemar on the digits one got right
and the other wrong. A candidate worse beyond noise is refused; one level with the champion within noise
(the same model with another seed, say) is refused too unless `allow_level`, so that the alias does not
flip back and forth on noise. With no champion yet only floors and ceilings apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mnist_mlp.errors import UserError
from mnist_mlp.experiments import gate, stats
from mnist_mlp.tracking import predictions, registry



class PromotionRefused(UserError):
    """The candidate broke a rule against the champion, or is not better beyond noise; one line says which."""


@dataclass
class Promotion:
    candidate: registry.ModelVersion
    previous: Optional[registry.ModelVersion]
    rows: list[gate.Row]
    alias: str
    moved: bool
    paired: Optional[stats.Paired] = None  # candidate against the previous champion, on the same test digits

    def line(self) -> str:
        name, accuracy = self.candidate.name, _accuracy(self.rows)
        target = f"{name}@{self.alias}"
        if not self.moved:
            return f"promote: {target} is already version {self.candidate.version} (run {self.candidate.run_id}); nothing to do"
        if self.previous is None:
            against = f"the first {self.alias}: floors and ceilings held"
        else:
            against = f"passed the gate against version {self.previous.version} (run {self.previous.run_id})"
            if self.paired is None:
                against += "; no paired test (--allow-level)"
            else:
                # one test, candidate against champion: no multiplicity to correct
                verdict = "better beyond noise" if self.paired.first_is() == "better" else "level within noise, promoted by --allow-level"
                against += f", {verdict}: {paired_text(self.paired, self.previous.version)}"
        return f"promote: {target} -> version {self.candidate.version} (run {self.candidate.run_id}{accuracy}); {against}"


def _accuracy(rows: list[gate.Row]) -> str:
    row = next((row for row in rows if row.metric == "test.accuracy"), None)
    return f", test accuracy {row.new:.4f}" if row else ""


def paired_text(result: stats.Paired, other: str) -> str:
    """The counts both ways, the difference with its 95 % interval and the p-value, against version `other`."""
    return (f"{result.only_first} digits right only in the candidate, {result.only_second} only in version {other}: "
            f"{result.digits:+d} digits ({100 * result.accuracy_difference:+.2f} points, 95 % {result.difference.points()}), "
            f"exact McNemar {stats.p_text(result.p_value)}")  # fmt: skip


def paired_with(candidate_run: str, champion_run: str) -> tuple[Optional[stats.Paired], str]:
    """The candidate's per-digit predictions against the champion's, or None and why there is no test."""
    mine, theirs = predictions.logged(candidate_run), predictions.logged(champion_run)
    missing = [run_id for run_id, found in ((candidate_run, mine), (champion_run, theirs)) if found is None]
    if missing:
        return None, f"run {' and run '.join(missing)} logged no per-digit predictions ({predictions.ARTIFACT})"
    if len(mine.actual) != len(theirs.actual) or (mine.actual != theirs.actual).any():
        return None, "the two runs were tested on different digits"
    return stats.paired(mine.correct, theirs.correct), ""


def promote(name: str, rules_path: str | Path, run_id: Optional[str] = None, version: Optional[str] = None,
            alias: str = registry.CHAMPION, allow_level: bool = False) -> Promotion:  # fmt: skip
    """Judge the candidate against `name@alias` and move the alias to it when no rule breaks and it is
    better beyond noise on the same test digits (or level, with `allow_level`)."""
    rules = gate.load_rules(rules_path)
    candidate = registry.model_version(name, version) if version else registry.version_of_run(name, run_id or "")
    champion = registry.alias_version(name, alias)
    metrics = registry.metrics_tree(registry.run_metrics(candidate.run_id))
    if champion is not None and champion.version == candidate.version:
        return Promotion(candidate, champion, gate.compare(rules, metrics, None, candidate.label), alias, moved=False)
    baseline = registry.metrics_tree(registry.run_metrics(champion.run_id)) if champion else None
    rows = gate.compare(rules, metrics, baseline, candidate.label)
    failures = [failure for row in rows for failure in row.failures]
    against = f"against {name}@{alias} = version {champion.version}" if champion else "with no champion yet"
    if failures:
        raise PromotionRefused(f"refused: {candidate.label} stays out, {against}: {'; '.join(failures)}")
    result = None
    if champion is not None:
        result, why = paired_with(candidate.run_id, champion.run_id)
        if result is not None and result.first_is() == "worse":
            raise PromotionRefused(f"refused: {candidate.label} is worse beyond noise {against}: {paired_text(result, champion.version)}")
        if not allow_level and result is None:
            raise PromotionRefused(f"refused: {candidate.label} stays out, {against}: no paired test ({why}); "
                                   "--allow-level promotes on the gate alone")  # fmt: skip
        if not allow_level and result.first_is() == "level":
            raise PromotionRefused(f"refused: {candidate.label} is level within noise: keeping version {champion.version} "
                                   f"({paired_text(result, champion.version)}); --allow-level promotes a level candidate")  # fmt: skip
    registry.set_alias(name, alias, candidate.version)
    return Promotion(candidate, champion, rows, alias, moved=True, paired=result)
