"""Appended run files (``metrics.jsonl``, ``resumes.jsonl``) survive a torn last line
(``run_files.py``); damage before the last line is named, not skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist import run_files


def test_a_torn_last_line_is_skipped_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / run_files.RESUMES
    path.write_text('{"resumed_from": 3}\n{"resumed_fr')
    assert run_files.read_jsonl(path) == [{"resumed_from": 3}]
    assert run_files.drop_torn_tail(path) and path.read_text() == '{"resumed_from": 3}\n'
    assert not run_files.drop_torn_tail(path)  # nothing torn: left as it is
    run_files.append_jsonl(path, {"resumed_from": 6})
    assert run_files.read_jsonl(path) == [{"resumed_from": 3}, {"resumed_from": 6}]


def test_metrics_are_cut_after_the_resumed_step_and_a_torn_line_dropped(tmp_path: Path) -> None:
    path = tmp_path / run_files.METRICS
    path.write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in range(1, 6)) + '{"step": 6, "lo')
    run_files.truncate_metrics(path, after_step=3)
    assert [row["step"] for row in run_files.read_jsonl(path)] == [1, 2, 3]
    assert path.read_text().endswith("}\n")


def test_a_bad_line_before_the_last_is_named(tmp_path: Path) -> None:
    path = tmp_path / run_files.METRICS
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not valid JSON"):
        run_files.read_jsonl(path)
