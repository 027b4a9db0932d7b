"""The DeepSpeed engine, configured from ``EngineConfig`` (never from a global).

Precision: ``auto`` is bf16 on GPU and fp32 on CPU. On CPU, Adam/AdamW use PyTorch's
implementation (``torch_adam``) rather than compiling DeepSpeed's fused kernel.

Console: DeepSpeed's own logger stays at its default (WARNING); the one line it prints with a
bare ``print`` while ``initialize`` loads its shared-memory op ("DeepSpeed ... built
successfully", from every worker) is dropped, and anything else it prints is passed on.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dml_dist.config.schema import EngineConfig


def uses_bf16(config: EngineConfig, use_gpu: bool) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and use_gpu)


def deepspeed_config(
    config: EngineConfig, micro_batch: int, use_gpu: bool, with_optimizer: bool = True
) -> dict[str, Any]:
    """The DeepSpeed JSON config for one optimizer step per global batch."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": uses_bf16(config, use_gpu)},
        "gradient_clipping": config.gradient_clipping,
        "steps_per_print": 2**31 - 1,
    }
    if with_optimizer:
        params: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
        if config.optimizer.lower() in ("adam", "adamw") and not use_gpu:
            params["torch_adam"] = True
        ds["optimizer"] = {"type": config.optimizer, "params": params}
    else:
        ds["zero_allow_untested_optimizer"] = True  # a client torch optimizer (tests: plain SGD)
    return ds


def build_engine(
    model: nn.Module,
    config: EngineConfig,
    micro_batch: int,
    use_gpu: bool,
    local_rank: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> Any:
    """Wrap ``model`` in a DeepSpeed engine on an already initialised process group.

    ``optimizer`` replaces the configured one (tests use plain SGD to read gradients off a step).
    """
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    with _without_build_notice():
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            config=deepspeed_config(config, micro_batch, use_gpu, with_optimizer=optimizer is None),
            dist_init_required=False,
        )
    return engine


_BUILD_NOTICE = re.compile(r"^DeepSpeed \S+ built successfully$")


@contextlib.contextmanager
def _without_build_notice() -> Iterator[None]:
    """Hold back what is printed to stdout meanwhile; print it afterwards, less DeepSpeed's build notice."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            yield
    finally:
        kept = [line for line in held.getvalue().splitlines() if not _BUILD_NOTICE.match(line)]
        if kept:
            print("\n".join(kept), flush=True)


def engine_dtype(config: EngineConfig, use_gpu: bool) -> torch.dtype:
    return torch.bfloat16 if uses_bf16(config, use_gpu) else torch.float32
