"""Automatic instance segmentation from the cache (AIS): the decoder's targets from instance labels, and the
seeded watershed that turns its outputs into instances."""
