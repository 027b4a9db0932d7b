"""dml-dist: distributed large-batch training for deep metric learning.

The package is organised by part of the system (README.md, "Layout"): ``config`` (typed
YAML), ``data`` (procedural set, WebDataset shards, class-driven sampler), ``losses``,
``distributed`` (the only ``torch.distributed`` caller), ``mining`` (hard-negative-class
selection and its Ray actor), ``models``, ``train`` (DeepSpeed engine, Ray Train entry), ``eval``
(faiss retrieval), ``observability`` (Prometheus and JSONL sinks), ``bench`` and ``cli`` (the
``dml-dist`` command).
"""

__version__ = "0.1.0"
