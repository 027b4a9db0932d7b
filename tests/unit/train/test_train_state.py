"""``TrainState``: what a checkpoint restores besides the engine comes back whole (step, skipped
steps, the cross-batch memory, the class source's mining state) and the evaluation history is cut
to the step in the list the evaluator appends to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dml_dist.bench.mining_study import LocalMiningClient
from dml_dist.config import MiningConfig
from dml_dist.eval.result import EvalPoint
from dml_dist.losses.memory import CrossBatchMemory
from dml_dist.mining.service import MiningService
from dml_dist.train.train_state import MINING_STATE, TrainState

C, D, N = 60, 8, 12


def _state(seed: int = 3) -> TrainState:
    config = MiningConfig(enabled=True, rule="partition", warmup_steps=2, refresh_every=0)
    service = MiningService(C, D, config, seed=seed)
    return TrainState(seed, CrossBatchMemory(24, D, dtype=torch.float64), LocalMiningClient(service, seed, C, N))


def test_a_train_state_comes_back_whole_from_its_state_dict_and_files(tmp_path: Path) -> None:
    state = _state()
    rng = np.random.default_rng(0)
    for step in range(6):  # the service learns class centres; the memory fills
        answer = state.classes.classes_for(step)
        emb = rng.normal(size=(N, D)).astype(np.float32)
        state.classes.publish(step, np.asarray(answer.classes), emb / np.linalg.norm(emb, axis=1, keepdims=True))
        state.memory.enqueue(torch.randn(N * 2, D, dtype=torch.float64), torch.arange(N * 2) % C, step)
    state.step, state.skipped_steps = 6, 2
    client_state = state.state_dict()
    state.save_files(tmp_path, rank=0)
    assert (tmp_path / MINING_STATE).is_file()

    resumed = _state()
    resumed.load_state_dict(client_state)
    resumed.load_files(tmp_path, rank=0)
    assert (resumed.step, resumed.skipped_steps, resumed.seed) == (6, 2, 3)
    for key, value in state.memory.state_dict().items():
        again = resumed.memory.state_dict()[key]
        assert torch.equal(value, again) if isinstance(value, torch.Tensor) else value == again, key
    for step in range(6, 12):  # the same batches as the uninterrupted source (partition: mined)
        expected, got = state.classes.classes_for(step), resumed.classes.classes_for(step)
        assert got.classes == expected.classes and got.mined, step


def test_only_rank_0_writes_the_class_source_and_the_history_is_cut_in_place(tmp_path: Path) -> None:
    state = _state()
    state.save_files(tmp_path, rank=1)
    assert not (tmp_path / MINING_STATE).exists()
    evaluator_history = state.eval_history  # HeldOutEvaluator appends to this list
    state.step = 10
    state.load_eval_history([EvalPoint(0, {1: 0.1}), EvalPoint(10, {1: 0.5}), EvalPoint(20, {1: 0.7})])
    assert evaluator_history is state.eval_history
    assert [point.step for point in evaluator_history] == [0, 10]
