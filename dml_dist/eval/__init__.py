"""Retrieval evaluation with faiss, the run's evaluation record (``eval.json``), the retrieval
gallery, and embedding of images with a trained model."""
