"""Parts of ``bench gpu`` (``dml_dist/bench/gpu``): the project's step through ``TorchEngine``
against the plain loop it is timed against, the GPU peak table, and the time budget's watchdog."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dml_dist.bench.gpu.batch_search import LR, WEIGHT_DECAY, synthetic_batch
from dml_dist.bench.gpu.engine import TorchEngine, plain_step
from dml_dist.bench.gpu.environment import peak_bf16_tflops
from dml_dist.bench.gpu.models import ModelSpec, build_embedder
from dml_dist.losses import build_loss
from dml_dist.train.step import optimizer_step
from tests.conftest import REPO

STEPS = 3


@pytest.mark.parametrize(
    ("spec", "loss_name", "chunk_size"),
    [
        (ModelSpec("resnet10t", 32), "npair_mc", 0),
        (ModelSpec("resnet10t", 32), "multi_similarity", 4),
        (ModelSpec("vit_tiny_patch16_224", 32, img_size=32), "multi_similarity", 0),
    ],
)
def test_dml_step_follows_the_plain_loop_in_fp32(spec: ModelSpec, loss_name: str, chunk_size: int) -> None:
    """Same initial weights, same batch, AdamW: the step of ``train/step.py`` (with and without
    gradient-cache chunks; batch norm frozen, so chunks change nothing) gives the plain loop's
    loss at every step, to 1e-6."""
    torch.manual_seed(0)
    plain_model = build_embedder(spec, embedding_dim=32)
    step_model = copy.deepcopy(plain_model)
    images, labels = synthetic_batch(8, spec.image_size, torch.device("cpu"))
    plain_optimizer = torch.optim.AdamW(plain_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    step_optimizer = torch.optim.AdamW(step_model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    engine = TorchEngine(step_model, step_optimizer, autocast_dtype=None)
    loss_fn = build_loss(loss_name)
    for step in range(STEPS):
        plain_loss = plain_step(plain_model, loss_fn, plain_optimizer, images, labels, autocast_dtype=None)
        result = optimizer_step(engine, loss_fn, images, labels, chunk_size)
        assert not result.skipped
        # From the second step on, the loss also shows that both optimizers moved the weights alike.
        assert result.loss == pytest.approx(plain_loss, abs=1e-6, rel=1e-6), f"step {step + 1}"


@pytest.mark.parametrize(
    ("device_name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("Tesla T4", None),
    ],
)
def test_peak_table_matches_the_specific_name_first(device_name: str, tflops: float | None) -> None:
    assert peak_bf16_tflops(device_name) == tflops


def test_watchdog_ends_the_run_at_the_budget_and_keeps_the_report(tmp_path: Path) -> None:
    """A section that would run past the budget (a sleep here) is cut at the budget less the
    grace; the report written so far stays, marked as stopped, and the exit status is 0."""
    path = tmp_path / "report.json"
    script = (
        "import time\n"
        "from dml_dist.bench.gpu.report import Report\n"
        f"report = Report({str(path)!r}, minutes=0.1, mode='cpu')\n"  # 6 s; the watchdog fires after 1 s
        "report.record('environment', {'status': 'ok'})\n"
        "report.start_watchdog()\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    assert "time budget of 0.1 min reached" in done.stdout
    report = json.loads(path.read_text())
    assert report["stopped_by_budget"] is True and report["complete"] is False
    assert report["environment"] == {"status": "ok"}
