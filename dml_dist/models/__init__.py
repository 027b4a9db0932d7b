"""Embedding networks."""

from dml_dist.models.embedder import SmallConvEmbedder, build_model

__all__ = ["SmallConvEmbedder", "build_model"]
