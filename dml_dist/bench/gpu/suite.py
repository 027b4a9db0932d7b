"""``dml-dist bench gpu``: the GPU path of a training worker, checked and timed in minutes on one
machine, without Ray, a cluster or a data set (issue 29).

Sections, in this order (the short fixed-cost ones first; the step section takes the time left):
1. ``environment`` (``environment.py``): device, memory, CUDA, torch, NCCL, bf16, optional packages;
2. ``collectives`` (``collectives_check.py``): the all-gather with gradient and each loss's share on
   an NCCL group (one process per GPU) against the single-process CPU result; ranks that have not
   finished within a third of the time left (a hung NCCL set-up, say) are ended: an error;
3. ``evaluation`` (``evaluation_check.py``): faiss Recall@1 against the exact torch result;
4. ``step`` (``step_check.py``): the project's step against a plain PyTorch loop, with and without
   gradient caching, and through DeepSpeed (ZeRO 0/1/2) when it imports; samples/s, phase
   shares, peak memory and MFU at the largest batch that fits.
The report (``report.py``) is written after every section and row; the whole run ends within
``--minutes``. Without a GPU the same code runs at a tiny size on CPU (gloo with two processes,
small timm models at 32 px, a tiny batch), says so in ``mode`` and ``note``, and exits 0.

Only torch and timm need to be importable (the GPU machines we borrow have nothing else):
every other dependency is imported where it is used and its absence reported as a skip; the
modules of this package import nothing else at import time (a test runs it with Ray, DeepSpeed,
faiss, WebDataset, Prometheus's client and pydantic blocked). Exit status: 0 when no section
failed (skips and a budget stop included), 1 when a check failed or a section raised.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dml_dist.bench.gpu.batch_search import StepScale, Target
from dml_dist.bench.gpu.collectives_check import run_collectives_check
from dml_dist.bench.gpu.environment import describe
from dml_dist.bench.gpu.evaluation_check import run_evaluation_check
from dml_dist.bench.gpu.models import ModelSpec
from dml_dist.bench.gpu.report import Report
from dml_dist.bench.gpu.step_check import run_step_check
from dml_dist.observability.logging import quiet_libraries


@dataclass(frozen=True)
class Scale:
    """Every size of one mode."""

    mode: str
    models: tuple[ModelSpec, ...]
    step: StepScale
    collective_rows_per_rank: int
    eval_rows: int
    eval_per_class: int
    eval_dim: int


GPU_SCALE = Scale(
    mode="gpu",
    models=(ModelSpec("resnet50", 224), ModelSpec("vit_small_patch16_224", 224)),
    step=StepScale(first_classes=32, max_classes=4096, timed_steps=10),
    collective_rows_per_rank=256,
    eval_rows=200_000,
    eval_per_class=10,
    eval_dim=512,
)
CPU_SCALE = Scale(
    mode="cpu",
    models=(ModelSpec("resnet10t", 32), ModelSpec("vit_tiny_patch16_224", 32, img_size=32)),
    step=StepScale(first_classes=4, max_classes=8, timed_steps=2),
    collective_rows_per_rank=8,
    eval_rows=2_000,
    eval_per_class=10,
    eval_dim=64,
)
CPU_NOTE = (
    "no GPU here: ran at a tiny size on CPU (gloo, resnet10t and vit_tiny at 32 px, fp32); figures are not GPU figures"
)


def run_gpu_check(json_path: str | None, minutes: float) -> dict[str, Any]:
    """Run every section within ``minutes``; returns the report (also written to ``json_path``)."""
    quiet_libraries()
    use_gpu = torch.cuda.is_available()
    scale = GPU_SCALE if use_gpu else CPU_SCALE
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    report = Report(json_path, minutes, scale.mode)
    if not use_gpu:
        report.data["note"] = CPU_NOTE
        print(f"bench gpu: {CPU_NOTE}", flush=True)
    report.start_watchdog()
    environment = describe(device)
    report.record("environment", {"status": "ok", **environment})
    _section(
        report,
        "collectives",
        lambda: run_collectives_check(
            use_gpu, scale.collective_rows_per_rank, scale.step.losses, time.monotonic() + report.left() / 3
        ),
    )
    _section(
        report,
        "evaluation",
        lambda: run_evaluation_check(scale.eval_rows, scale.eval_per_class, scale.eval_dim, device),
    )
    bf16 = use_gpu and torch.cuda.is_bf16_supported()
    target = Target(device, torch.bfloat16 if bf16 else None, environment.get("peak_bf16_tflops"))
    _section(
        report,
        "step",
        lambda: run_step_check(
            scale.models, scale.step, target, report.deadline, lambda partial: report.record("step", partial)
        ),
    )
    report.finish()
    print(summary(report.data), flush=True)
    return report.data


def _section(report: Report, name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one section unless the budget is spent; an exception is reported as the section's error."""
    if report.left() <= 0:
        report.record(name, {"status": "skipped", "reason": "time budget"})
        return
    print(f"bench gpu: {name} ...", flush=True)
    try:
        section = run()
    except Exception as error:
        lines = traceback.format_exception(error)
        section = {"status": "error", "error": f"{type(error).__name__}: {error}", "traceback": "".join(lines)[-4000:]}
    report.record(name, section)


def summary(data: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    env = data.get("environment", {})
    lines = [f"device: {env.get('device')}  torch {env.get('torch')}  CUDA {env.get('cuda')}  NCCL {env.get('nccl')}"]
    missing = [name for name, version in env.get("optional_packages", {}).items() if version is None]
    lines.append(f"optional packages missing: {', '.join(missing) or 'none'}")
    coll = data.get("collectives", {})
    lines.append(f"collectives: {coll.get('status')} ({coll.get('backend')}, world size {coll.get('world_size')})")
    ev = data.get("evaluation", {})
    lines.append(
        f"evaluation: {ev.get('status')}  Recall@1 torch {ev.get('torch_recall_at_1')} "
        f"faiss {ev.get('faiss_recall_at_1')} ({ev.get('faiss_build')})"
    )
    lines.append(
        f"{'model':<28}{'loss':<18}{'runner':<18}{'batch':>6}{'samples/s':>11}{'vs plain':>9}{'MFU':>7}{'GiB':>7}"
    )
    for model in data.get("step", {}).get("models", []):
        for row in model["rows"]:
            lines.append(
                f"{model['model']:<28}{row['loss']:<18}{row['runner']:<18}{row.get('global_batch', ''):>6}"
                f"{_number(row.get('samples_per_second'), '.1f'):>11}{_number(row.get('vs_plain_loop'), '.3f'):>9}"
                f"{_number(row.get('mfu'), '.3f'):>7}{_number(row.get('peak_memory_gib'), '.1f'):>7}"
                + ("" if row["status"] == "ok" else f"  {row['status']}: {row.get('error') or row.get('reason')}")
            )
    lines.append(f"complete: {data['complete']}  ok: {data['ok']}  elapsed {data.get('elapsed_s')} s")
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
