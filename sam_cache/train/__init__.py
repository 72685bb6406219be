"""Decoder-only finetuning from the cache: cached samples with their objects and prompts, the training loop."""
