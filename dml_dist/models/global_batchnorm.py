"""Batch normalization over the global batch, exact under data parallelism on any backend.

In training, per channel c (Ioffe and Szegedy 2015), over every image of every rank:

    mean_c = S1_c / n,   var_c = S2_c / n - mean_c^2,   y = (x - mean_c) / sqrt(var_c + eps) * w_c + b_c

with n = (global batch) x H x W and S1, S2 the sums of x and x^2 over all ranks. Each rank sums
its own rows and the two sums are all-reduced *with autograd*
(``collectives.all_reduce_sum_with_grad``): the backward of a summing all-reduce sums the
gradients that every rank's normalized rows send to the statistics, so each rank's input
gradient holds every rank's use of the statistics. With the loss scaling of
``dist/collectives.py`` (each rank's share x W, gradients averaged by DeepSpeed) a step equals
the single-process step on the concatenated batch: the gradient-parity tests check it on 1, 2
and 4 gloo ranks. ``torch.nn.SyncBatchNorm`` does the same only on CUDA with NCCL.

Running statistics use the global mean and the unbiased global variance (n / (n - 1)), so every
rank holds the same buffers; evaluation (``model.eval()``) uses them and needs no collective.
Without a process group (one process) this is ``torch.nn.BatchNorm2d``'s computation.

``to_global_batch_norm`` swaps every ``BatchNorm2d`` of a network (a timm backbone) for this
class, statistics and affine parameters kept, parameter names unchanged; timm's
``BatchNormAct2d`` (batch norm, then dropout and activation) becomes ``GlobalBatchNormAct2d``.

The sums in fp32 (E[x^2] - E[x]^2) lose precision when |mean| >> std; conv activations after
ReLU stay well inside that range, and the variance is clamped at 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dml_dist.distributed import collectives


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch across ranks."""

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x_BCHW)
        x = x_BCHW.float()
        sums_2C = torch.stack([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))])
        count = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], device=x.device)
        sums_2C = collectives.all_reduce_sum_with_grad(sums_2C)
        n = float(collectives.all_reduce_sum(count).item())
        mean_C = sums_2C[0] / n
        var_C = (sums_2C[1] / n - mean_C * mean_C).clamp_min(0.0)
        self._update_running(mean_C.detach(), var_C.detach(), n)
        scale_C = self.weight * torch.rsqrt(var_C + self.eps)
        shift_C = self.bias - mean_C * scale_C
        y = x * scale_C[None, :, None, None] + shift_C[None, :, None, None]
        return y.to(x_BCHW.dtype)

    @torch.no_grad()
    def _update_running(self, mean_C: torch.Tensor, var_C: torch.Tensor, n: float) -> None:
        running_mean: torch.Tensor = self.running_mean  # type: ignore[assignment]
        running_var: torch.Tensor = self.running_var  # type: ignore[assignment]
        tracked: torch.Tensor = self.num_batches_tracked  # type: ignore[assignment]
        momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked.item() + 1)
        unbiased = var_C * (n / max(n - 1.0, 1.0))
        running_mean.mul_(1.0 - momentum).add_(mean_C, alpha=momentum)
        running_var.mul_(1.0 - momentum).add_(unbiased, alpha=momentum)
        tracked.add_(1)


class GlobalBatchNormAct2d(GlobalBatchNorm2d):
    """timm's ``BatchNormAct2d`` over the global batch: global batch norm, then its dropout and activation."""

    def __init__(self, num_features: int, drop: nn.Module, act: nn.Module, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        self.drop = drop
        self.act = act

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x_BCHW)))


def to_global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with each ``BatchNorm2d`` (and timm ``BatchNormAct2d``) replaced by its global
    version holding the same parameters and statistics; ``ValueError`` for other batch norms
    (1d, 3d), which have no global version here."""
    from timm.layers import BatchNormAct2d

    if isinstance(module, GlobalBatchNorm2d):
        return module
    if isinstance(module, nn.BatchNorm2d):
        settings: dict[str, Any] = {"eps": module.eps, "momentum": module.momentum, "affine": module.affine}
        settings["track_running_stats"] = module.track_running_stats
        if isinstance(module, BatchNormAct2d):
            converted: GlobalBatchNorm2d = GlobalBatchNormAct2d(
                module.num_features, module.drop, module.act, **settings
            )
        elif type(module) is nn.BatchNorm2d:
            converted = GlobalBatchNorm2d(module.num_features, **settings)
        else:
            raise ValueError(f"model.batch_norm: global: no global version of {type(module).__name__}; use frozen")
        converted.load_state_dict(module.state_dict())
        return converted
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        raise ValueError(f"model.batch_norm: global: no global version of {type(module).__name__}; use frozen")
    for name, child in module.named_children():
        setattr(module, name, to_global_batch_norm(child))
    return module
