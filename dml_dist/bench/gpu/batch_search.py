"""The step section's set-up for ``bench gpu``: where rows run (``Target``), the section's sizes
(``StepScale``), synthetic batches, and the batch search.

The search runs the project's step without chunks (the most memory-hungry way to run it) on
global batches of 2 x C images, C doubling from ``StepScale.first_classes`` until a step fails
(out of GPU memory, or a cuBLAS / cuDNN allocation error near the limit), C reaches
``StepScale.max_classes``, or the next size would not leave time for the timed rows.
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dml_dist.bench.gpu.engine import TorchEngine, synchronize
from dml_dist.bench.gpu.models import ModelSpec
from dml_dist.losses import build_loss
from dml_dist.train.step import optimizer_step

LR = 1e-3
WEIGHT_DECAY = 1e-4
"""AdamW settings of every row (``EngineConfig``'s defaults)."""


@dataclass(frozen=True)
class StepScale:
    """Sizes of the step section: batch search bounds (classes; the batch is 2 x classes) and
    timed steps per row."""

    first_classes: int
    max_classes: int
    timed_steps: int
    losses: tuple[str, ...] = ("npair_mc", "multi_similarity")


@dataclass
class Target:
    """Where rows run: the device, autocast precision (None: fp32) and the GPU's bf16 peak."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    peak_tflops: float | None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.device.type == "cuda" else torch.contiguous_format


def synthetic_batch(num_classes: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [2C, 3, S, S] uniform in [-1, 1] (the loaders' range) and labels [2C], two per
    class, drawn on ``device`` (a large batch drawn on the host would take seconds)."""
    generator = torch.Generator(device=device).manual_seed(num_classes)
    images = torch.rand(2 * num_classes, 3, image_size, image_size, generator=generator, device=device) * 2 - 1
    labels = torch.arange(num_classes, device=device).repeat_interleave(2)
    return images, labels


def find_largest_batch(
    base: nn.Module, spec: ModelSpec, scale: StepScale, target: Target, deadline: float, num_rows: int
) -> tuple[int, list[dict[str, Any]]]:
    """The largest C (classes; batch 2C) whose plain-path step runs, and every size tried."""
    model = copy_to(base, target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    engine = TorchEngine(model, optimizer, target.autocast_dtype)
    loss_fn = build_loss(scale.losses[0])
    tries: list[dict[str, Any]] = []
    fitted, classes = 0, scale.first_classes
    _step_failure(
        engine, loss_fn, classes, spec.image_size, target
    )  # untimed: first-step costs (kernels, optimizer state)
    while classes <= scale.max_classes:
        started = time.perf_counter()
        failure = _step_failure(engine, loss_fn, classes, spec.image_size, target)
        seconds = time.perf_counter() - started
        tries.append({"global_batch": 2 * classes, "fits": failure is None, "seconds": seconds})
        if failure is not None:
            tries[-1]["error"] = failure
            break
        fitted = classes
        # A row is a warm-up step and the timed steps; the next size's steps take about twice as long.
        needed = 2 * seconds * (scale.timed_steps + 1) * num_rows + 2 * seconds
        if needed > deadline - time.monotonic():
            tries[-1]["stopped"] = "the next size would not leave time for the rows"
            break
        classes *= 2
    del engine, optimizer, model
    release(target.device)
    return fitted, tries


def _step_failure(
    engine: TorchEngine, loss_fn: nn.Module, num_classes: int, image_size: int, target: Target
) -> str | None:
    """None when one step on 2 x ``num_classes`` images runs, else the first line of its error.

    Running out of GPU memory is the expected end of the search, but near the limit cuBLAS and
    cuDNN can fail with errors of their own (``CUBLAS_STATUS_ALLOC_FAILED``, say), so any
    runtime error ends it; the message says which it was.
    """
    images, labels = synthetic_batch(num_classes, image_size, target.device)
    images = images.contiguous(memory_format=target.memory_format)
    try:
        optimizer_step(engine, loss_fn, images, labels)
        synchronize(target.device)
        return None
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one
        lines = str(error).strip().splitlines() or [""]
        message = f"{type(error).__name__}: {lines[0][:300]}"
    # Out of the handler: the exception and the frames (and tensors) it held are gone.
    del images, labels
    engine.zero_grad()
    release(target.device)
    return message


def copy_to(base: nn.Module, target: Target) -> nn.Module:
    """A copy of ``base`` (the same initial weights for every row) on the target device, channels_last on GPU."""
    model = copy.deepcopy(base).to(target.device)
    return model.to(memory_format=target.memory_format)  # type: ignore[call-overload]  # (the stubs omit it)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
