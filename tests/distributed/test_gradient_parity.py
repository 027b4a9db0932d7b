"""The distributed step (all-gather with gradient, DeepSpeed averaging, optional GradCache
chunks) equals one single-process step on the global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dml_dist.config import DataConfig, ModelConfig
from dml_dist.data.datasets import procedural_root
from tests.distributed.parity import StepSpec, distributed_gradients, single_process_gradients


def _assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("world_size", "zero_stage", "chunk_size"),
    [(1, 0, 0), (2, 0, 0), (3, 2, 0), (4, 1, 0), (2, 1, 5), (2, 2, 4)],
    ids=["w1-z0", "w2-z0", "w3-z2", "w4-z1", "w2-z1-chunk5", "w2-z2-chunk4"],
)
def test_parameter_gradients_equal_the_single_process_step(
    world_size: int, zero_stage: int, chunk_size: int, tmp_path: Path
) -> None:
    spec = StepSpec(zero_stage=zero_stage, chunk_size=chunk_size)
    expected, expected_loss = single_process_gradients(spec)
    got, loss = distributed_gradients(world_size, spec, tmp_path)
    _assert_same(got, expected)
    assert loss == pytest.approx(expected_loss, rel=1e-6)


def test_first_step_loss_is_the_same_on_one_and_four_workers(small_data: DataConfig, tmp_path: Path) -> None:
    shards = procedural_root(small_data.procedural, Path(small_data.cache_dir)) / "train"
    spec = StepSpec(num_classes=32, shards=str(shards), image_size=small_data.procedural.image_size)
    grads_1, loss_1 = distributed_gradients(1, spec, tmp_path)
    grads_4, loss_4 = distributed_gradients(4, spec, tmp_path)
    assert loss_4 == pytest.approx(loss_1, rel=1e-6)
    _assert_same(grads_4, grads_1)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_global_batch_norm_step_equals_the_single_process_step(world_size: int, tmp_path: Path) -> None:
    """Conv-4 style: batch norm over the global batch and the 2 x 2 map flattened."""
    model = ModelConfig(channels=[8, 16], embedding_dim=16, norm="batch", pool_grid=2)
    spec = StepSpec(num_classes=8, zero_stage=1, model=model)
    expected, expected_loss = single_process_gradients(spec)
    got, loss = distributed_gradients(world_size, spec, tmp_path)
    _assert_same(got, expected)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert any("backbone.1.weight" in name for name in got)  # the batch-norm scale is trained and compared
