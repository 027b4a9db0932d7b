"""Every registered loss runs real optimizer steps through DeepSpeed on 2 gloo ranks, and every
parameter it owns moves (the margin loss's learnable beta included)."""

from __future__ import annotations

import math
from pathlib import Path

from dml_dist.losses import LOSSES
from tests.distributed.parity import every_loss_two_steps


def test_every_loss_steps_through_the_engine(tmp_path: Path) -> None:
    report = every_loss_two_steps(2, tmp_path)
    assert sorted(report) == sorted(LOSSES)
    for name, result in report.items():
        assert all(math.isfinite(v) for v in result["losses"]), (name, result)
        assert result["all_parameters_moved"], name
