"""Metrics: per-object mask counts and scores, instance-matching scores (mSA, SA50…), and aggregates."""
