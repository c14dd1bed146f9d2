"""`mnist-mlp promote`: a registered version becomes `<model>@champion` only when it passes the metric gate.

The candidate is the version registered from one run (by default the run in reports/metrics.json, the
model the workspace evaluated last). Its run's metrics are judged against the current champion's run's
metrics under the gate's rules (metrics_rules.yaml): the same rules, tolerances, floors and ceilings as
`mnist-mlp check-metrics`, with the champion as the baseline. With no champion yet only floors and
ceilings apply, as with no baseline in git.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mnist_mlp.experiments import gate
from mnist_mlp.tracking import registry
from mnist_mlp.errors import UserError


class PromotionRefused(UserError):
    """The candidate broke a rule against the champion; the message names each broken rule."""


@dataclass
class Promotion:
    candidate: registry.ModelVersion
    previous: Optional[registry.ModelVersion]
    rows: list[gate.Row]
    alias: str
    moved: bool

    def line(self) -> str:
        name, accuracy = self.candidate.name, _accuracy(self.rows)
        target = f"{name}@{self.alias}"
        if not self.moved:
            return f"promote: {target} is already version {self.candidate.version} (run {self.candidate.run_id}); nothing to do"
        against = (f"passed the gate against version {self.previous.version} (run {self.previous.run_id})" if self.previous
                   else f"the first {self.alias}: floors and ceilings held")  # fmt: skip
        return f"promote: {target} -> version {self.candidate.version} (run {self.candidate.run_id}{accuracy}); {against}"


def _accuracy(rows: list[gate.Row]) -> str:
    row = next((row for row in rows if row.metric == "test.accuracy"), None)
    return f", test accuracy {row.new:.4f}" if row else ""


def promote(name: str, rules_path: str | Path, run_id: Optional[str] = None, version: Optional[str] = None,
            alias: str = registry.CHAMPION) -> Promotion:  # fmt: skip
    """Judge the candidate against `name@alias` and move the alias to it when no rule breaks."""
    rules = gate.load_rules(rules_path)
    candidate = registry.model_version(name, version) if version else registry.version_of_run(name, run_id or "")
    champion = registry.alias_version(name, alias)
    metrics = registry.metrics_tree(registry.run_metrics(candidate.run_id))
    if champion is not None and champion.version == candidate.version:
        return Promotion(candidate, champion, gate.compare(rules, metrics, None, candidate.label), alias, moved=False)
    baseline = registry.metrics_tree(registry.run_metrics(champion.run_id)) if champion else None
    rows = gate.compare(rules, metrics, baseline, candidate.label)
    failures = [failure for row in rows for failure in row.failures]
    if failures:
        against = f"against {name}@{alias} = version {champion.version}" if champion else "with no champion yet"
        raise PromotionRefused(f"refused: {candidate.label} stays out, {against}: {'; '.join(failures)}")
    registry.set_alias(name, alias, candidate.version)
    return Promotion(candidate, champion, rows, alias, moved=True)
