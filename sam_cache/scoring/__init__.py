"""Scoring decoders from the cache: the evaluation runner over samples × prompts × checkpoints, corrective
clicks, stitched images, semantic maps, volumes in 3D, propagation, and the identity of a grid's tasks."""
