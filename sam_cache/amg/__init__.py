"""Automatic masks from the cache: SAM's generator on cached embeddings, sweeps, stitching, outputs."""
