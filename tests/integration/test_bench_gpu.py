"""``dml-dist bench gpu`` in its CPU mode, end to end in a subprocess: once with only torch and
timm importable (every optional dependency blocked), once through the CLI with everything
installed (DeepSpeed's rows and faiss's Recall@1 against torch's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO

BLOCKED = ("ray", "deepspeed", "faiss", "webdataset", "prometheus_client", "pydantic")
"""Not on the GPU machines we borrow. (PyYAML stays: timm itself imports it.)"""
MINUTES = "15"  # an upper bound, far above the CPU mode's ~30 s (a loaded machine takes minutes): nothing is cut short
RUNNERS = {"plain_loop", "dml_step", "dml_step_chunked"}


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)


def _check_common(report: dict[str, Any]) -> None:
    """What both runs must show: CPU mode said so, every section ran, the step rows have figures."""
    assert report["mode"] == "cpu" and "no GPU here" in report["note"]
    assert report["complete"] is True and report["ok"] is True and report["stopped_by_budget"] is False
    assert (
        report["environment"]["device"] == "cpu" and report["environment"]["torch"] == __import__("torch").__version__
    )
    collectives = report["collectives"]
    assert collectives["status"] == "ok" and collectives["backend"] == "gloo" and collectives["world_size"] == 2
    for rank in collectives["ranks"]:
        assert set(rank["losses"]) == {"npair_mc", "multi_similarity"}
        assert all(check["passed"] and check["errors"]["gather"] == 0 for check in rank["losses"].values())
    assert 0 < report["evaluation"]["torch_recall_at_1"] < 1
    models = report["step"]["models"]
    assert [m["model"] for m in models] == ["resnet10t@32px", "vit_tiny_patch16_224@32px"]
    for model in models:
        # The batch search doubles 8 -> 16 unless the machine is too slow for 16 within the budget.
        assert model["train_gflops_per_sample"] > 0 and model["global_batch"] in (8, 16)
        rows = {(row["loss"], row["runner"]): row for row in model["rows"]}
        for loss in ("npair_mc", "multi_similarity"):
            for runner in RUNNERS:
                row = rows[(loss, runner)]
                assert row["status"] == "ok" and row["samples_per_second"] > 0, row
            assert rows[(loss, "dml_step_chunked")]["chunk_size"] == model["global_batch"] // 4
            assert rows[(loss, "dml_step")]["vs_plain_loop"] > 0
            shares = rows[(loss, "dml_step")]["phase_shares"]
            assert set(shares) == {"forward", "all_gather", "loss", "backward", "optimizer"}
            assert abs(sum(shares.values()) - 1) < 1e-9


def test_cpu_mode_with_only_torch_and_timm(tmp_path: Path) -> None:
    path = tmp_path / "bench-gpu.json"
    script = (
        "import runpy, sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None  # import NAME raises ImportError\n"
        f"sys.argv = ['dml_dist.bench.gpu', '--json', {str(path)!r}, '--minutes', {MINUTES!r}]\n"
        "runpy.run_module('dml_dist.bench.gpu', run_name='__main__')\n"
    )
    done = _run([sys.executable, "-c", script])
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(path.read_text())
    _check_common(report)
    assert all(report["environment"]["optional_packages"][name] is None for name in BLOCKED if name != "pydantic")
    assert report["evaluation"]["status"] == "skipped" and "faiss" in report["evaluation"]["reason"]
    assert report["step"]["deepspeed"].startswith("skipped")
    assert all(not row["runner"].startswith("deepspeed") for m in report["step"]["models"] for row in m["rows"])


def test_cli_cpu_mode_with_deepspeed_and_faiss(tmp_path: Path) -> None:
    path = tmp_path / "bench-gpu.json"
    done = _run(
        [str(Path(sys.executable).parent / "dml-dist"), "bench", "gpu", "--json", str(path), "--minutes", MINUTES]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no GPU here" in done.stdout and "plain_loop" in done.stdout  # the note and the table
    report = json.loads(path.read_text())
    _check_common(report)
    evaluation = report["evaluation"]
    assert evaluation["status"] == "ok" and evaluation["faiss_build"] == "cpu"
    assert evaluation["difference"] <= evaluation["tolerance"]
    for model in report["step"]["models"]:
        deepspeed = [row for row in model["rows"] if row["runner"].startswith("deepspeed")]
        assert [row["runner"] for row in deepspeed] == ["deepspeed_zero0", "deepspeed_zero1", "deepspeed_zero2"]
        assert all(row["status"] == "ok" and row["samples_per_second"] > 0 for row in deepspeed)
