"""The trained module of a worker (``build_trained``), its first weights when they live in the
run's storage, and the driver's check of them.

``model.pretrained`` may be a file URI and ``model.init_from`` a run directory URI in the run's
storage (``s3://...``; anything ``pyarrow.fs`` opens). ``localize_weights`` copies each into
node-local scratch once per node (``node_copies.scratch_dir``: a worker writes a copy of its
own and renames it into place) and returns the model section with those local paths, which is
what ``models/weights.py`` reads. Local paths and the hub (``true``, ``hf-hub:``) pass through.

``check_weights`` builds the model once on the driver, with its weights, before Ray starts: a
missing file, a file of another model or weights neither on the hub nor in its cache fail in one
line there, not as a traceback in every worker; with ``pretrained: true`` it also leaves the
driver's node with a warm hub cache.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

from dml_dist import run_files, storage
from dml_dist.config import ModelConfig
from dml_dist.config.loader import replaced
from dml_dist.config.schema import ExperimentConfig
from dml_dist.losses import build_loss
from dml_dist.models.embedder import EmbedderWithLoss, build_model
from dml_dist.models.weights import HUB_PREFIX
from dml_dist.train import node_copies


def _local_copy(uri: str, field: str) -> Path:
    """A node-local copy of the file at ``uri`` (copied once per node)."""
    final = node_copies.scratch_dir("weights", uri) / uri.split("?")[0].rsplit("/", 1)[-1]
    if final.is_file():
        return final
    try:
        data = storage.read_bytes(uri)
    except Exception as err:  # pyarrow's FileNotFoundError / OSError with the reason
        raise ValueError(f"{field}: cannot read {uri} ({err})") from err
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_bytes(data)
    os.replace(partial, final)
    return final


def localize_weights(model: ModelConfig) -> ModelConfig:
    """``model`` with storage URIs of ``pretrained`` and ``init_from`` replaced by node-local copies."""
    pretrained, init_from = model.pretrained, model.init_from
    if isinstance(pretrained, str) and not pretrained.startswith(HUB_PREFIX) and not storage.is_local(pretrained):
        pretrained = str(_local_copy(pretrained, "model.pretrained"))
    if init_from is not None and not storage.is_local(init_from):
        embedder = _local_copy(str(storage.join(init_from, run_files.EMBEDDER)), "model.init_from")
        init_from = str(embedder.parent)
    return replaced(model, {"pretrained": pretrained, "init_from": init_from})


def build_trained(config: ExperimentConfig, use_gpu: bool) -> EmbedderWithLoss:
    """The module a worker's engine trains: the embedder with its first weights (storage URIs
    copied to the node), the loss; on GPU, bf16 autocast (``engine.precision: autocast``) and
    channels-last layout (``model.channels_last``)."""
    model = build_model(localize_weights(config.model), config.data)
    loss = build_loss(config.loss.name, **config.loss.params)
    trained = EmbedderWithLoss(model, loss, autocast_bf16=use_gpu and config.engine.precision == "autocast")
    if use_gpu and config.model.channels_last:
        trained.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return trained


def check_weights(config: ExperimentConfig) -> None:
    """Build the model with its first weights once, on the driver (see module doc)."""
    if config.model.pretrained in (None, False) and config.model.init_from is None:
        return
    build_model(localize_weights(config.model), config.data)
