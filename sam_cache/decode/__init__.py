"""Prompts -> decoder -> masks: the prompt registry, the batched decoder pass, and the one decode path."""
