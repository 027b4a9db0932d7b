"""The DeepSpeed engine, configured from ``EngineConfig`` (never from a global).

Precision: ``auto`` is bf16 on GPU and fp32 on CPU. On CPU, Adam/AdamW use PyTorch's
implementation (``torch_adam``) rather than compiling DeepSpeed's fused kernel.

Console: DeepSpeed's own logger stays at its default (WARNING). Its CPU shared-memory op is
never built (``_skip_shm_comm_op``), so neither is its "built successfully" line printed.

Schedule: DeepSpeed's own schedulers, stepped by ``engine.step()`` and saved in its
checkpoints (so a resumed run continues the schedule). With T = ``train.steps``,
w = ``warmup_steps``, r = ``min_lr_ratio`` and k = max(t - 1, 0) the scheduler's position when
optimizer step t = 0, 1, ... runs (DeepSpeed's schedulers start at 0 and advance after a step):
- ``warmup_cosine`` (``WarmupCosineLR``): lr * k / w during warm-up (k < w), then
  lr * (r + (1 - r) * (1 + cos(pi * (k - w + 1) / (T - w))) / 2) (tested);
- ``warmup_linear`` (``WarmupDecayLR``): lr * k / w, then linear decay to 0 at step T.
``engine.deepspeed`` is merged last, key by key, so anything DeepSpeed takes can be set.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from dml_dist.config import EngineConfig
from dml_dist.models.param_groups import parameter_groups


def uses_bf16(config: EngineConfig, use_gpu: bool) -> bool:
    return config.precision == "bf16" or (config.precision == "auto" and use_gpu)


def deepspeed_config(
    config: EngineConfig,
    micro_batch: int,
    use_gpu: bool,
    with_optimizer: bool = True,
    total_steps: int = 0,
    group_lrs: list[float] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed JSON config for one optimizer step per global batch (``total_steps``: the
    length of the learning-rate schedule; ``group_lrs``: the peak rate of each parameter group,
    when they differ)."""
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
    scheduler = _scheduler(config, total_steps, group_lrs)
    if scheduler is not None:
        ds["scheduler"] = scheduler
    return merge_config(ds, config.deepspeed)


def _scheduler(config: EngineConfig, total_steps: int, group_lrs: list[float] | None) -> dict[str, Any] | None:
    """WarmupCosineLR scales each group's own lr; WarmupDecayLR needs each group's peak (a list)."""
    if config.schedule == "constant":
        return None
    if total_steps <= config.warmup_steps:
        raise ValueError(f"engine.schedule: {config.schedule} needs more than warmup_steps={config.warmup_steps} steps")
    if config.schedule == "warmup_cosine":
        params = {
            "total_num_steps": total_steps,
            "warmup_num_steps": config.warmup_steps,
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": config.min_lr_ratio,
            "warmup_type": "linear",
        }
        return {"type": "WarmupCosineLR", "params": params}
    params = {
        "total_num_steps": total_steps,
        "warmup_num_steps": config.warmup_steps,
        "warmup_min_lr": 0.0,
        "warmup_max_lr": group_lrs if group_lrs else config.lr,
        "warmup_type": "linear",
    }
    return {"type": "WarmupDecayLR", "params": params}


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in: nested mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_engine(
    model: nn.Module,
    config: EngineConfig,
    micro_batch: int,
    use_gpu: bool,
    local_rank: int,
    optimizer: torch.optim.Optimizer | None = None,
    total_steps: int = 0,
) -> Any:
    """Wrap ``model`` in a DeepSpeed engine on an already initialised process group.

    ``optimizer`` replaces the configured one (tests use plain SGD to read gradients off a step).
    The configured optimizer gets parameter groups (``models/param_groups.py``): the backbone at
    lr x ``backbone_lr_mult``, no weight decay on norms and biases.
    """
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    _skip_shm_comm_op()
    groups = parameter_groups(model, config.lr, config.weight_decay, config.backbone_lr_mult)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer,
        config=deepspeed_config(
            config,
            micro_batch,
            use_gpu,
            with_optimizer=optimizer is None,
            total_steps=total_steps,
            group_lrs=[group["lr"] for group in groups],
        ),
        dist_init_required=False,
    )
    return engine


def _skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce.

    ``deepspeed.init_distributed`` on the CPU accelerator builds ``deepspeed_shm_comm`` with
    torch's cpp_extension, and only DeepSpeed's inference all-reduce uses it; training reduces
    through torch.distributed (gloo). The build needs a C++ compiler on every node, and every load
    takes a lock file in the extensions folder: a worker killed while holding it (a lost node, a
    cancelled job) leaves the file, and every later run on that node waits on it forever. Marked
    incompatible, the op is skipped as on a platform without it.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def engine_dtype(config: EngineConfig, use_gpu: bool) -> torch.dtype:
    return torch.bfloat16 if uses_bf16(config, use_gpu) else torch.float32
