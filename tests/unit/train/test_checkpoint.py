"""Sealed checkpoints: an unfinished or damaged one is never accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist.train import checkpoint


def _fake_checkpoint(root: Path, step: int, seal: bool = True) -> Path:
    directory = root / checkpoint.tag_for(step)
    directory.mkdir(parents=True)
    (directory / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * step)
    (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x" * step)
    if seal:
        checkpoint.write_manifest(directory, step)
    return directory


def test_newest_sealed_checkpoint_wins(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 20)
    assert checkpoint.latest_good(tmp_path) == checkpoint.GoodCheckpoint("step-000020", 20)


def test_unfinished_and_damaged_checkpoints_are_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_checkpoint(tmp_path, 10)
    _fake_checkpoint(tmp_path, 30, seal=False)  # the save never finished
    damaged = _fake_checkpoint(tmp_path, 20)
    data = bytearray((damaged / "mp_rank_00_model_states.pt").read_bytes())
    data[5] ^= 0xFF
    (damaged / "mp_rank_00_model_states.pt").write_bytes(bytes(data))
    assert checkpoint.latest_good(tmp_path) == checkpoint.GoodCheckpoint("step-000010", 10)
    err = capsys.readouterr().err
    assert "step-000030: no complete.json" in err and "step-000020: mp_rank_00_model_states.pt does not match" in err


def test_missing_file_is_named(tmp_path: Path) -> None:
    directory = _fake_checkpoint(tmp_path, 5)
    (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert checkpoint.verify(directory) == "zero_pp_rank_0_mp_rank_00_optim_states.pt is missing"
