"""Distributed semantics: the only place that calls ``torch.distributed``."""
