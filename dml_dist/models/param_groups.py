"""Optimizer parameter groups for fine-tuning: backbone against head, decay against no decay.

``parameter_groups`` splits the trained module's parameters (the embedder, and the loss's own
parameters when it has some) in up to four groups, handed to DeepSpeed as ``model_parameters``:

- ``backbone`` (names under ``embedder.backbone.``): learning rate lr x ``engine.backbone_lr_mult``;
  ``head``: everything else (the linear head, a loss's learned parameters), at lr;
- in each, weight decay only on weight matrices and conv kernels: parameters with one dimension
  or fewer (norm scales and shifts, biases) and those a timm model lists in its
  ``no_weight_decay()`` (a ViT's position embedding and class token) take none, as timm's
  ``param_groups_weight_decay`` does.

The head's groups come first (``engine.get_lr()[0]`` is ``engine.lr``). Each group carries its
``name``; ``frozen_backbone`` sets the backbone groups' learning rate to
0 for one step, which with ``TimmEmbedder.set_backbone_frozen`` leaves the backbone unchanged
whatever the optimizer (DeepSpeed hands zero gradients to parameters that got none, and AdamW's
decay is scaled by the learning rate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

BACKBONE_PREFIX = "embedder.backbone."


def _no_decay_names(module: nn.Module) -> set[str]:
    """Names of parameters that a submodule lists in its ``no_weight_decay()`` (timm's convention)."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        listed = getattr(sub, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return names


def parameter_groups(
    module: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """The trained parameters of ``module`` in named groups with their own lr and weight decay."""
    skip = _no_decay_names(module)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith(BACKBONE_PREFIX) else "head"
        decays = param.ndim > 1 and not name.endswith(".bias") and name not in skip
        groups.setdefault((part, decays), []).append(param)
    return [
        {
            "name": part,
            "params": params,
            "lr": lr * backbone_lr_mult if part == "backbone" else lr,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (part, decays), params in sorted(groups.items(), key=lambda item: (item[0][0] != "head", item[0][1]))
    ]


@contextmanager
def frozen_backbone(optimizer: Any, embedder: nn.Module, frozen: bool) -> Iterator[None]:
    """While the body runs (one optimizer step): with ``frozen``, the backbone runs without
    gradient and its groups' learning rate is 0. Afterwards a group's learning rate is put back
    unless a scheduler has set a new one (a value other than 0) during the step."""
    if not frozen:
        yield
        return
    groups = [group for group in optimizer.param_groups if group.get("name") == "backbone"]
    saved = [group["lr"] for group in groups]
    for group in groups:
        group["lr"] = 0.0
    embedder.set_backbone_frozen(True)  # type: ignore[operator]
    try:
        yield
    finally:
        embedder.set_backbone_frozen(False)  # type: ignore[operator]
        for group, lr in zip(groups, saved, strict=True):
            if group["lr"] == 0.0:
                group["lr"] = lr
