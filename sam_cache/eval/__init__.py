"""Scoring: per-object counts, the runner over samples x tasks on Dask, evaluate and ablate, aggregates."""
