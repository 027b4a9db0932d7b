"""All-gathered N-pair on W gloo ranks through DeepSpeed equals one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.parity import distributed_gradients, single_process_gradients

NUM_CLASSES = 12


@pytest.mark.parametrize(("world_size", "zero_stage"), [(2, 0), (2, 1), (3, 2)])
def test_parameter_gradients_equal_the_single_process_step(world_size: int, zero_stage: int, tmp_path: Path) -> None:
    params = {"l2_reg": 0.002, "temperature": 0.1}
    expected = single_process_gradients(NUM_CLASSES, "npair_mc", params)
    got = distributed_gradients(world_size, NUM_CLASSES, "npair_mc", params, zero_stage, tmp_path)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
