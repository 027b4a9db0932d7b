"""Embedding networks: ``embedder.py`` (``build_model``: an embedder from its config section),
``timm_backbone.py`` (a timm backbone under the linear head), ``weights.py`` (first weights).

Nothing is imported here, so ``timm_backbone.py`` imports without the config package (and so
without pydantic): ``bench gpu`` builds its embedders on machines that have only torch and timm.
"""
