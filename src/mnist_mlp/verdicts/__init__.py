"""Judging results: statistics, a sweep's comparison, a search's report, the presets report, the metric gate, promotion."""
