"""Training: the DeepSpeed engine, the per-worker loop, and the Ray Train launcher."""
