"""The engines that ``bench gpu`` times, and the plain PyTorch step they are compared with.

``TorchEngine`` gives a model and a torch optimizer the interface of DeepSpeed's engine that
``train/step.py`` drives (call, ``backward``, ``set_gradient_accumulation_boundary``, ``step``,
``zero_grad``, ``was_step_applied``, ``module``), in one process, with bf16 autocast on a GPU.
So the project's step runs where DeepSpeed is not installed, and the difference from
``plain_step`` is the step's own work (gather, loss share, finite checks, gradient caching), not
another engine's.

``Synchronized`` wraps an engine (this one or DeepSpeed's) and a loss so that each phase of the
step ends with ``torch.cuda.synchronize``: the step's phase clocks read host time, and CUDA
kernels run after their launch returns, so without it a phase's time would land in the next
phase that waits on the GPU. A synchronization per phase costs microseconds against steps of
tens of milliseconds; on CPU it is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dml_dist.distributed import collectives


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """bf16 (or ``dtype``) autocast on ``device``; disabled when ``dtype`` is None (fp32)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


class TorchEngine:
    """``module`` and ``optimizer`` behind DeepSpeed's engine interface, one process only.

    Forward runs under autocast to ``autocast_dtype`` (None: fp32); parameters and optimizer
    state stay fp32, as in PyTorch's mixed-precision recipe. ``step`` steps and then clears the
    gradients, as DeepSpeed's does. With one process there is nothing to reduce, so gradient
    accumulation boundaries change nothing.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None):
        if collectives.world_size() > 1:
            raise ValueError("TorchEngine: one process only; it averages no gradients over ranks")
        self.module = module
        self.optimizer = optimizer
        self.autocast_dtype = autocast_dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.autocast_dtype):
            out: torch.Tensor = self.module(images)
        return out

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """One process: nothing is reduced at a boundary."""

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def was_step_applied(self) -> bool:
        return True


def plain_step(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels_B: torch.Tensor,
    autocast_dtype: torch.dtype | None,
) -> float:
    """The textbook step the project's step is measured against: forward under autocast, the
    loss in fp32 on the whole batch, backward, optimizer step. Returns the loss."""
    with autocast(images.device, autocast_dtype):
        emb_BD = model(images)
    loss = loss_fn(emb_BD.float(), labels_B)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Synchronized:
    """``engine`` whose forward, backward and step return after the GPU has finished them."""

    def __init__(self, engine: Any, device: torch.device):
        self.engine = engine
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.engine(images)
        synchronize(self.device)
        return out  # type: ignore[no-any-return]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        synchronize(self.device)

    def step(self) -> None:
        self.engine.step()
        synchronize(self.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class SynchronizedLoss:
    """``loss_fn`` that returns after the GPU has computed it (the step's ``loss`` phase)."""

    def __init__(self, loss_fn: Callable[..., torch.Tensor], device: torch.device):
        self.loss_fn = loss_fn
        self.device = device

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.loss_fn(*args, **kwargs)
        synchronize(self.device)
        return out
