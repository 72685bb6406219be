"""Masks for a user's own prompts, decoded from the cache (`samcache predict`), and label layers from them."""
