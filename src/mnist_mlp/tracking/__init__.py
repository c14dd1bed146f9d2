"""Tracking: everything MLflow (the store, runs, the registry, queries, model loading)."""
