"""``dml-dist bench scaling``: throughput with 1 and 2 workers, where step time goes, and
activation memory with and without gradient caching.

Every case runs the real optimizer step (``dml_dist.train.step``) of the quickstart model
inside a DeepSpeed engine on W gloo processes (one thread each), on synthetic 32 x 32 images
so that decoding is not part of the figure. Memory is the growth of each worker's peak
resident set during the measured steps over its peak before them (what the step itself
allocates: activations, gathered embeddings, gradients), read from ``getrusage``.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from dml_dist.config import EngineConfig, ModelConfig
from dml_dist.distributed import collectives
from dml_dist.losses import build_loss
from dml_dist.models.embedder import build_model
from dml_dist.observability.logging import quiet_libraries
from dml_dist.train.engine import build_engine
from dml_dist.train.step import optimizer_step


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    world_size: int
    num_classes: int
    chunk_size: int = 0
    steps: int = 3
    image_size: int = 32


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rank_main(rank: int, case: Case, port: int, out_dir: str) -> None:
    quiet_libraries()  # a spawned process starts with Python's default warning filters
    collectives.init_local_gloo(rank, case.world_size, port)
    torch.manual_seed(0)
    per_rank = case.num_classes * 2 // case.world_size
    images = torch.randn(per_rank, 1, case.image_size, case.image_size)
    labels = torch.arange(rank * per_rank, (rank + 1) * per_rank) // 2
    engine = build_engine(
        build_model(ModelConfig()), EngineConfig(zero_stage=1, precision="fp32"), per_rank, False, rank
    )
    loss_fn = build_loss("npair_mc", temperature=0.1)
    collectives.barrier()
    rss_before = _peak_rss_mb()
    results = []
    for _ in range(case.steps):
        collectives.barrier()
        started = time.perf_counter()
        result = optimizer_step(engine, loss_fn, images, labels, case.chunk_size)
        collectives.barrier()
        results.append({"step_seconds": time.perf_counter() - started, **result.seconds})
    record = {
        "rank": rank,
        "steps": results,
        "activation_mb": _peak_rss_mb() - rss_before,
        "rss_before_mb": rss_before,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    collectives.shutdown()


def run_case(case: Case) -> dict[str, Any]:
    """Run one case on fresh processes; medians over its steps (rank 0) and max memory over ranks."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(case, collectives.free_local_port(), out_dir), nprocs=case.world_size, join=True)
        records = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))]
    steps = records[0]["steps"][1:] or records[0]["steps"]  # the first step warms caches up
    step_seconds = statistics.median(s["step_seconds"] for s in steps)
    gather_loss = statistics.median(s.get("all_gather", 0.0) + s.get("loss", 0.0) for s in steps)
    return {
        **asdict(case),
        "global_images": case.num_classes * 2,
        "step_seconds": step_seconds,
        "samples_per_second": case.num_classes * 2 / step_seconds,
        "gather_loss_share": gather_loss / step_seconds,
        "activation_mb_per_worker": max(r["activation_mb"] for r in records),
    }


def run_scaling_bench(chunk_size: int = 100, steps: int = 3) -> dict[str, Any]:
    """The three measurements of the scaling issue, printed as a table."""
    cases = [
        Case(world_size=1, num_classes=320, steps=steps),
        Case(world_size=2, num_classes=320, steps=steps),
        Case(world_size=2, num_classes=1000, steps=steps),
        Case(world_size=2, num_classes=1000, chunk_size=chunk_size, steps=steps),
    ]
    rows = [run_case(case) for case in cases]
    print(f"{'workers':>8}{'N':>6}{'chunk':>7}{'s/step':>9}{'samples/s':>11}{'gather+loss':>13}{'act. MB/worker':>16}")
    for r in rows:
        print(
            f"{r['world_size']:>8}{r['num_classes']:>6}{r['chunk_size'] or '-':>7}{r['step_seconds']:>9.3f}"
            f"{r['samples_per_second']:>11.0f}{r['gather_loss_share']:>12.1%}{r['activation_mb_per_worker']:>16.0f}"
        )
    speedup = rows[1]["samples_per_second"] / rows[0]["samples_per_second"]
    memory_ratio = rows[3]["activation_mb_per_worker"] / max(rows[2]["activation_mb_per_worker"], 1e-9)
    print(f"2 workers / 1 worker throughput at N=320: {speedup:.2f}x")
    print(f"activation memory at N=1000, chunk {chunk_size} / plain: {memory_ratio:.2f}")
    return {"suite": "scaling", "rows": rows, "speedup_2_over_1": speedup, "chunked_memory_ratio": memory_ratio}
