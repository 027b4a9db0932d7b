"""The learning-rate schedule and ``engine.deepspeed`` reach a real DeepSpeed engine: the lr at
every step follows the formula in ``train/engine.py``, and merged keys take effect."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from dml_dist.config import EngineConfig
from dml_dist.train.engine import deepspeed_config, merge_config
from tests.conftest import REPO

STEPPER = textwrap.dedent(
    """
    import json, sys, torch
    from dml_dist.config import EngineConfig
    from dml_dist.distributed.collectives import free_local_port, init_local_gloo
    from dml_dist.train.engine import build_engine
    init_local_gloo(0, 1, free_local_port())
    config = EngineConfig(**json.loads(sys.argv[1]))
    engine = build_engine(torch.nn.Linear(4, 2), config, 2, use_gpu=False, local_rank=0, total_steps=int(sys.argv[2]))
    lrs = []
    for _ in range(int(sys.argv[2])):
        lrs.append(engine.optimizer.param_groups[0]["lr"])
        engine.backward(engine(torch.ones(2, 4)).sum())
        engine.step()
    print(json.dumps({"lrs": lrs, "clip": engine.gradient_clipping()}))
    """
)


def _lrs(fields: dict, steps: int, **env_extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", STEPPER, json.dumps(fields), str(steps)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_engine_starts_beside_a_lock_left_by_a_killed_build(tmp_path) -> None:
    """A worker killed while DeepSpeed JIT-built its CPU shared-memory op left torch's lock file,
    and every later run on that machine waited on it forever (CI timed out this way)."""
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    got = _lrs({"lr": 0.1}, 2, TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert got["lrs"] == [0.1, 0.1]
    assert (tmp_path / "deepspeed_shm_comm" / "lock").exists()


def test_warmup_cosine_follows_the_formula_and_deepspeed_keys_merge() -> None:
    lr, warmup, steps, floor = 0.1, 3, 12, 0.1
    fields = {"lr": lr, "schedule": "warmup_cosine", "warmup_steps": warmup, "min_lr_ratio": floor}
    got = _lrs({**fields, "deepspeed": {"gradient_clipping": 0.5}}, steps)
    for t, value in enumerate(got["lrs"]):
        k = max(t - 1, 0)  # DeepSpeed's scheduler position when step t runs
        if k < warmup:
            expected = lr * k / warmup
        else:
            expected = lr * (floor + (1 - floor) * (1 + math.cos(math.pi * (k - warmup + 1) / (steps - warmup))) / 2)
        assert value == pytest.approx(expected, rel=1e-3, abs=1e-6), (t, got["lrs"])
    assert got["clip"] == 0.5


def test_config_merge_is_key_by_key() -> None:
    config = EngineConfig(
        deepspeed={"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "wall_clock_breakdown": True}
    )
    ds = deepspeed_config(config, micro_batch=4, use_gpu=False)
    assert ds["zero_optimization"] == {"stage": 0, "offload_optimizer": {"device": "cpu"}}
    assert ds["wall_clock_breakdown"] is True and ds["train_micro_batch_size_per_gpu"] == 4
    assert merge_config({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
