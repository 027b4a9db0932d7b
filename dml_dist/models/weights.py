"""Where a network's first weights come from: the hub, a file, or an earlier run.

- ``model.pretrained: true`` / ``hf-hub:ORG/NAME`` (``hub_backbone``): timm's own loader
  (``timm.create_model(pretrained=True)``, with the hub repository ``ORG/NAME`` instead of the
  model's default one), which applies the model's checkpoint filter and reads the Hugging Face
  hub cache (``HF_HOME``). The processes of one node take a file lock in that cache around it, so
  the first downloads and the others read the cache (one download per node, not per worker);
  with ``HF_HUB_OFFLINE=1`` a warm cache is all it reads. With neither network nor cache it fails
  in one line naming the three ways to provide the weights.
- ``model.pretrained: FILE`` (``load_weights_file``): a safetensors file or a PyTorch state dict
  (``torch.load(weights_only=True)``; a ``state_dict`` / ``model`` entry and ``module.``
  prefixes are unwrapped), such as ``torch.save(timm_model.state_dict(), FILE)``. The classifier
  (the model's ``pretrained_cfg["classifier"]``) is dropped, since the embedder has none. A file
  of another model fails in one line naming the file, the model and the first missing and
  unexpected keys. A file in the run's storage (a URI) is copied to the node first
  (``train/model_sources.py``).
- ``model.init_from: RUN_DIR`` (``load_run_weights``): the whole embedder (backbone and head) of
  that run's ``embedder.pt``; a head of another shape (another ``embedding_dim``) keeps its fresh
  initialization, with a warning. A run on other input channels (grayscale weights for RGB
  images, or the reverse) has its first convolution adapted as timm adapts a pretrained stem
  (``adapt_input_conv``), for C stored and C' wanted channels: W'[:, c] = W[:, c mod C] * C / C'
  where C divides C' (grayscale to RGB), else W'[:, c] = sum_k W[:, k] / C' (RGB to grayscale).
  Either way an image whose channels are all equal meets the filter responses it met before.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dml_dist.models.timm_backbone import create_timm_model, timm_name

HUB_PREFIX = "hf-hub:"
EMBEDDER_FILE = "embedder.pt"  # run_files.py's name of the trained embedder in a run directory


def ways_to_provide(backbone: str) -> str:
    return (
        f"Provide the weights of {backbone} one of three ways: (1) a warm hub cache on every node (run once "
        f"with network access, or copy a cache to HF_HOME, then HF_HUB_OFFLINE=1 reads it); (2) model.pretrained: "
        f"PATH or a storage URI of a .safetensors file or torch state dict (e.g. torch.save(timm.create_model("
        f"'{timm_name(backbone)}', pretrained=True).state_dict(), PATH) where there is network); (3) model.init_from: "
        f"RUN_DIR of an earlier run with this backbone. model.pretrained: null trains from random initialization."
    )


def hub_backbone(backbone: str, in_channels: int, kwargs: dict[str, Any], hub_id: str | None = None) -> nn.Module:
    """The timm model with its published weights (``hub_id``: another hub repository's)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import WeakFileLock

    overlay = {"pretrained_cfg_overlay": {"hf_hub_id": hub_id}} if hub_id else {}
    cache = Path(constants.HF_HUB_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    lock = cache / f".dml-dist-{re.sub(r'[^A-Za-z0-9._-]', '_', hub_id or timm_name(backbone))}.lock"
    source = f"{HUB_PREFIX}{hub_id}" if hub_id else "true"
    try:
        with WeakFileLock(lock):  # one process per node downloads; the others then read the cache
            return create_timm_model(backbone, in_channels, kwargs, pretrained=True, **overlay)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError (offline, nothing cached), network errors
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise ValueError(
            f"model.pretrained: {source}: the weights of {backbone} are neither reachable on the hub{offline} nor in "
            f"the hub cache {cache} ({type(err).__name__}). {ways_to_provide(backbone)}"
        ) from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch state dict saved with ``torch.save``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, a non-tensor object refused by weights_only, ...
        raise ValueError(f"model.pretrained: {path} is not a safetensors file or a torch state dict ({err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"model.pretrained: {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    names = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{n}." for n in ([names] if isinstance(names, str) else names))


def load_weights_file(backbone: nn.Module, path: str, backbone_name: str) -> None:
    """Load a weights file into ``backbone`` (a timm model without classifier); ``ValueError``
    in one line when the file is missing or belongs to another model."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"model.pretrained: {file} not found. {ways_to_provide(backbone_name)}")
    classifier = _classifier_prefixes(backbone)
    state = {k: v for k, v in read_state_dict(file).items() if not (classifier and k.startswith(classifier))}
    expected = backbone.state_dict()
    counted = {k for k in expected if not k.endswith("num_batches_tracked")}
    missing = sorted(counted - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("num_batches_tracked"))
    reshaped = sorted(k for k in counted & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if reshaped:
            key = reshaped[0]
            problems.append(
                f"{len(reshaped)} keys of another shape (first: {key} {list(state[key].shape)}, "
                f"expected {list(expected[key].shape)})"
            )
        raise ValueError(
            f"model.pretrained: {file} does not fit {backbone_name}: {'; '.join(problems)} "
            f"(the weights of another model? timm.create_model('{timm_name(backbone_name)}').state_dict() has the keys)"
        )
    backbone.load_state_dict({k: state[k] for k in counted}, strict=False)


def load_run_weights(model: nn.Module, run_dir: str) -> None:
    """Start ``model`` from the embedder of the run in ``run_dir`` (see module doc)."""
    file = Path(run_dir) / EMBEDDER_FILE
    if not file.is_file():
        raise ValueError(f"model.init_from: {file} not found (has that run finished? it writes {EMBEDDER_FILE} last)")
    state: dict[str, torch.Tensor] = torch.load(file, map_location="cpu", weights_only=True)["model"]
    expected = model.state_dict()
    counted = {k for k in expected if not k.endswith("num_batches_tracked")}
    state = _adapt_input_conv(state, expected, file)
    reshaped = sorted(k for k in counted & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    fresh_head = [k for k in reshaped if k.startswith("head.")]
    missing = sorted(counted - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("num_batches_tracked"))
    if missing or unexpected or len(fresh_head) != len(reshaped):
        first = (missing or unexpected or sorted(set(reshaped) - set(fresh_head)))[0]
        raise ValueError(
            f"model.init_from: {file} does not fit this model.backbone ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped) - len(fresh_head)} reshaped keys; first: {first}); "
            f"init_from needs a run with the same backbone"
        )
    if fresh_head:
        shapes = ", ".join(f"{k} {list(state[k].shape)} -> {list(expected[k].shape)}" for k in fresh_head)
        warnings.warn(
            f"model.init_from: the head of {file} has another shape ({shapes}): it is initialized afresh",
            stacklevel=2,
        )
    model.load_state_dict({k: state[k] for k in counted if k not in fresh_head}, strict=False)


def _adapt_input_conv(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], file: Path
) -> dict[str, torch.Tensor]:
    """``state`` with its first convolution ([O, C, k, k]) adapted to the model's [O, C', k, k]
    (module doc). Not timm's ``adapt_input_conv``: that one assumes 3 stored channels, so it
    leaves a grayscale run's [O, 1, k, k] as it is for C' = 3."""
    first = next((k for k, v in expected.items() if v.ndim == 4), None)
    if first is None or first not in state:
        return state
    old, new = state[first], expected[first]
    if (
        old.ndim != 4
        or old.shape[1] == new.shape[1]
        or (old.shape[0], *old.shape[2:]) != (new.shape[0], *new.shape[2:])
    ):
        return state
    stored, wanted = old.shape[1], new.shape[1]
    if wanted % stored == 0:
        adapted = old.repeat(1, wanted // stored, 1, 1) * (stored / wanted)
    else:
        adapted = old.sum(1, keepdim=True).repeat(1, wanted, 1, 1) / wanted
    warnings.warn(
        f"model.init_from: {file} was trained on {stored} input channel(s); its first convolution "
        f"({first}) is adapted to {wanted}",
        stacklevel=3,
    )
    return {**state, first: adapted}
