"""Serving: checkpoints exported for inference."""
