"""Automatic instance segmentation from the cache (AIS): the decoder's targets from instance labels, the
seeded watershed that turns its outputs into instances, and APG, which turns them into prompts for SAM's decoder."""
