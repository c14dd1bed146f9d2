"""Experiments: sweeps, comparisons, the metric gate, promotion."""
