"""The training-step section of ``bench gpu``: the project's step (``train/step.py``) against a
plain PyTorch loop, same model, same batch, same optimizer, timed in the same run.

Per backbone (``models.py``):
1. **Batch search** (``batch_search.py``): the project's step without chunks (the most memory-hungry way to run it)
   on global batches of 2 x C images, C doubling from ``Scale.first_classes`` until a step runs
   out of GPU memory (or C reaches ``Scale.max_classes``, or the next size would not leave time
   for the timed rows); the largest C whose step ran is the batch of every row.
2. **Rows**, for each loss: ``plain_loop`` (``engine.plain_step``), ``dml_step`` (the step through
   ``engine.TorchEngine``), ``dml_step_chunked`` (the same with gradient caching, chunks of a
   quarter of the batch), and, when DeepSpeed imports, ``deepspeed_zero0/1/2`` (the step through
   DeepSpeed's engine, ``train/engine.py``; bf16 on GPU, with PyTorch's AdamW so no CUDA op is
   compiled) for the first loss. Every row starts from the same initial weights; it is timed with
   ``bench/timing.median_seconds`` (one warm-up step, then the median of the timed steps).

Figures per row: samples/s, the step's phase shares (forward, all_gather, loss, backward,
optimizer: each phase's share of their sum, from the step's own clocks, each phase
synchronized: ``engine.Synchronized``; ``phase_seconds`` has the times), peak
GPU memory allocated during a step (weights, gradients and optimizer state included), MFU
(samples/s x model FLOPs per sample / the GPU's dense bf16 peak), and samples/s against the
plain loop. Images are random and already on the device: no data loading is timed.
On GPU the model and the images are channels_last, and the forward runs under bf16 autocast;
the section runs on one GPU (``cuda:0``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dml_dist.bench.gpu.batch_search import (
    LR,
    WEIGHT_DECAY,
    StepScale,
    Target,
    copy_to,
    find_largest_batch,
    release,
    synthetic_batch,
)
from dml_dist.bench.gpu.engine import Synchronized, SynchronizedLoss, TorchEngine, plain_step, synchronize
from dml_dist.bench.gpu.models import ModelSpec, build_embedder, train_flops_per_sample
from dml_dist.bench.timing import median_seconds
from dml_dist.distributed import collectives
from dml_dist.losses import build_loss
from dml_dist.train.step import optimizer_step

ZERO_STAGES = (0, 1, 2)
RUNNERS = ("plain_loop", "dml_step", "dml_step_chunked")


def run_step_check(
    models: tuple[ModelSpec, ...],
    scale: StepScale,
    target: Target,
    deadline: float,
    on_row: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every backbone in turn, each given an equal share of the time left; ``on_row`` is called
    with the section so far after each row, so a report can be written as they come.

    With DeepSpeed importable the section runs inside a process group of one process (NCCL on
    GPU, gloo on CPU), which DeepSpeed's engine needs; the step's collectives are the identity there.
    """
    build_deepspeed = _deepspeed_engine_builder()
    precision = (
        "fp32" if target.autocast_dtype is None else f"{str(target.autocast_dtype).removeprefix('torch.')} autocast"
    )
    section: dict[str, Any] = {"status": "ok", "precision": precision, "models": []}
    if build_deepspeed is None:
        section["deepspeed"] = "skipped: DeepSpeed (or the project's engine config) does not import here"
    threads = torch.get_num_threads()
    if build_deepspeed is not None:
        port = collectives.free_local_port()
        init = collectives.init_local_nccl if target.device.type == "cuda" else collectives.init_local_gloo
        init(0, 1, port)
        torch.set_num_threads(threads)  # gloo's set-up takes one thread; the rows without DeepSpeed had them all
    try:
        for i, spec in enumerate(models):
            share = (deadline - time.monotonic()) / (len(models) - i)
            figures: dict[str, Any] = {"model": spec.label, "rows": []}
            section["models"].append(figures)
            check_model(
                spec, scale, target, time.monotonic() + share, build_deepspeed, figures, lambda: on_row(section)
            )
    finally:
        collectives.shutdown()
        torch.set_num_threads(threads)
    rows = [row for model in section["models"] for row in model["rows"]]
    failed = any(row["status"] == "error" for row in rows) or any("error" in model for model in section["models"])
    section["status"] = "error" if failed else "ok"
    return section


def check_model(
    spec: ModelSpec,
    scale: StepScale,
    target: Target,
    deadline: float,
    build_deepspeed: Callable[..., Any] | None,
    result: dict[str, Any],
    on_row: Callable[[], None],
) -> None:
    """Batch search and every row for one backbone (module docstring), into ``result``."""
    base = build_embedder(spec)
    flops = train_flops_per_sample(base, spec.image_size, torch.device("cpu"))
    result["train_gflops_per_sample"] = flops / 1e9
    num_rows = len(scale.losses) * len(RUNNERS) + (len(ZERO_STAGES) if build_deepspeed is not None else 0)
    classes, tries = find_largest_batch(base, spec, scale, target, deadline, num_rows)
    result["batch_search"] = tries
    if classes == 0:
        result["error"] = "the smallest batch did not fit or did not finish in time"
        return
    images, labels = synthetic_batch(classes, spec.image_size, target.device)
    images = images.contiguous(memory_format=target.memory_format)
    result.update(global_batch=images.shape[0], chunk_size=max(1, images.shape[0] // 4))
    plan = [(loss, runner) for loss in scale.losses for runner in RUNNERS]
    plan += [(scale.losses[0], f"deepspeed_zero{s}") for s in ZERO_STAGES] if build_deepspeed is not None else []
    step_seconds = next(t["seconds"] for t in reversed(tries) if t["fits"])  # then each row's own
    for i, (loss_name, runner) in enumerate(plan):
        left = deadline - time.monotonic()
        if left < 2 * step_seconds:  # a row is at least a warm-up step and a timed one
            result["rows"].append({"runner": runner, "loss": loss_name, "status": "skipped", "reason": "time budget"})
            continue
        budget_s = left / (len(plan) - i)
        try:
            row = _timed_row(
                base, runner, loss_name, images, labels, result["chunk_size"], target, scale, budget_s, build_deepspeed
            )
        except Exception as error:  # one row's failure (DeepSpeed's set-up, say) is reported, the rest still run
            row = {"runner": runner, "loss": loss_name, "status": "error", "error": f"{type(error).__name__}: {error}"}
        _add_ratios(row, result["rows"], flops, target)
        result["rows"].append(row)
        step_seconds = row.get("step_seconds", step_seconds)
        on_row()


def _timed_row(
    base: nn.Module,
    runner: str,
    loss_name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    target: Target,
    scale: StepScale,
    budget_s: float,
    build_deepspeed: Callable[..., Any] | None,
) -> dict[str, Any]:
    """One row: a fresh copy of the initial weights, one warm-up step, then the timed steps."""
    release(target.device)  # what the previous row left
    row: dict[str, Any] = {"runner": runner, "loss": loss_name, "global_batch": int(images.shape[0])}
    model = copy_to(base, target)
    loss_fn = build_loss(loss_name).to(target.device)
    try:
        step, phases = _make_step(runner, model, loss_fn, images, labels, chunk_size, target, build_deepspeed, row)
        peak = [0]

        def timed_step() -> None:
            if target.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(target.device)
            step()
            synchronize(target.device)
            if target.device.type == "cuda":
                peak[0] = max(peak[0], torch.cuda.max_memory_allocated(target.device))

        seconds = median_seconds(timed_step, scale.timed_steps, budget_s=budget_s)
    except torch.cuda.OutOfMemoryError:
        row.update(status="error", error=f"out of GPU memory at a global batch of {images.shape[0]}")
        return row
    row.update(status="ok", step_seconds=seconds, samples_per_second=images.shape[0] / seconds)
    if phases:
        total = sum(phases[-1].values())
        row["phase_shares"] = {name: value / max(total, 1e-12) for name, value in phases[-1].items()}
        row["phase_seconds"] = phases[-1]
    if target.device.type == "cuda":
        row["peak_memory_gib"] = peak[0] / 2**30
    return row


def _make_step(
    runner: str,
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    target: Target,
    build_deepspeed: Callable[..., Any] | None,
    row: dict[str, Any],
) -> tuple[Callable[[], object], list[dict[str, float]]]:
    """The row's one-step callable, and the list it appends each step's phase seconds to."""
    phases: list[dict[str, float]] = []
    if runner == "plain_loop":
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        return lambda: plain_step(model, loss_fn, optimizer, images, labels, target.autocast_dtype), phases
    if runner.startswith("deepspeed_zero"):
        assert build_deepspeed is not None
        engine = build_deepspeed(model, int(runner[-1]), images.shape[0], target.device.type == "cuda")
        images = images.to(torch.bfloat16) if target.autocast_dtype is not None else images
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        engine = TorchEngine(model, optimizer, target.autocast_dtype)
    chunk = chunk_size if runner == "dml_step_chunked" else 0
    row["chunk_size"] = chunk
    synced, synced_loss = Synchronized(engine, target.device), SynchronizedLoss(loss_fn, target.device)

    def step() -> None:
        result = optimizer_step(synced, synced_loss, images, labels, chunk)
        phases.append(dict(result.seconds))

    return step, phases


def _add_ratios(row: dict[str, Any], previous: list[dict[str, Any]], flops: float, target: Target) -> None:
    """MFU, and samples/s against the plain loop of the same loss (when both ran)."""
    if row.get("status") != "ok":
        return
    row["mfu"] = row["samples_per_second"] * flops / (target.peak_tflops * 1e12) if target.peak_tflops else None
    plain = [r for r in previous if r["runner"] == "plain_loop" and r["loss"] == row["loss"] and r["status"] == "ok"]
    if plain and row["runner"] != "plain_loop":
        row["vs_plain_loop"] = row["samples_per_second"] / plain[0]["samples_per_second"]


def _deepspeed_engine_builder() -> Callable[..., Any] | None:
    """A function (model, zero stage, micro batch, use_gpu) -> DeepSpeed engine, or None when
    DeepSpeed or the project's engine module does not import (then the rows are skipped)."""
    try:
        import deepspeed  # noqa: F401

        from dml_dist.config import EngineConfig
        from dml_dist.train.engine import build_engine
    except ImportError:
        return None

    def build(model: nn.Module, stage: int, micro_batch: int, use_gpu: bool) -> Any:
        config = EngineConfig(
            zero_stage=stage,
            precision="bf16" if use_gpu else "fp32",
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            deepspeed={"optimizer": {"params": {"torch_adam": True}}},
        )
        return build_engine(model, config, micro_batch, use_gpu, local_rank=collectives.rank())

    return build
