"""Retrieval evaluation with faiss, and embedding of images with a trained model."""
