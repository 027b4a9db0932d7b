"""Library noise is stopped where it starts: in a fresh process set up as Ray Train sets up a
worker (root logger at INFO), ``quiet_libraries`` leaves nothing on the console from the
libraries a worker uses, where without it the same calls print warnings and log lines."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

WORKER = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO)  # Ray Train's worker logging: root logger at INFO
    if sys.argv[1] == "quiet":
        from dml_dist.observability.logging import quiet_libraries
        quiet_libraries()
    import numpy as np
    import torch
    import torch.distributed as dist
    from dml_dist.distributed.collectives import free_local_port, init_local_gloo
    init_local_gloo(0, 1, free_local_port())
    dist.all_gather_into_tensor(torch.empty(4), torch.ones(4))  # what DeepSpeed's ZeRO calls every step
    if sys.argv[2] == "engine":
        from dml_dist.config import EngineConfig
        from dml_dist.train.engine import build_engine
        build_engine(torch.nn.Linear(4, 2), EngineConfig(zero_stage=1), 2, use_gpu=False, local_rank=0)
    from dml_dist.eval.retrieval import retrieval_metrics  # faiss, imported on first use
    retrieval_metrics(np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32), np.arange(20) % 5, [1])
    print("done")
    """
)


def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    env.pop("DML_DIST_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, env=env, timeout=300, check=True
    )


def test_a_quiet_worker_prints_only_its_own_lines() -> None:
    loud = run_worker("loud", "no-engine")
    assert "all_gather_into_tensor` is deprecated" in loud.stderr
    assert "Loading faiss" in loud.stderr or "Successfully loaded faiss" in loud.stderr

    quiet = run_worker("quiet", "engine")
    assert quiet.stdout == "done\n"
    assert quiet.stderr == ""
