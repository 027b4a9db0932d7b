"""The training step line with the run's ETA, and progress bars that ``-q`` turns off."""

from __future__ import annotations

import math

import pytest

from dml_dist.observability.progress import eta_seconds, format_duration, format_step_line, progress_bar


def test_step_line_shows_rate_pace_and_eta() -> None:
    line = format_step_line(100, 300, 3.04123, 980.4, 0.2614, 50.0, mined=True)
    assert line == "step 100/300  loss 3.0412  980 samples/s (980/worker)  0.261 s/step  mined   elapsed 50s  ETA 1m40s"
    line = format_step_line(100, 300, 3.04123, 980.4, 0.2614, 50.0, lr=0.00125, workers=2)
    assert "loss 3.0412  lr 1.25e-03  980 samples/s (490/worker)  0.261 s/step" in line
    assert "random" in format_step_line(10, 300, 1.0, 10.0, 1.0, 10.0, mined=False)
    assert "mined" not in format_step_line(10, 300, 1.0, 10.0, 1.0, 10.0)  # mining off: no word at all


def test_last_step_gives_the_total_time_instead_of_an_eta() -> None:
    line = format_step_line(300, 300, 2.5, 1000.0, 0.3, 3725.0, mined=True)
    assert line.endswith("done in 1h02m") and "ETA" not in line


def test_eta_counts_from_the_step_a_resumed_run_restarted_at() -> None:
    # resumed at step 200: 50 steps took 25 s, 50 steps are left
    assert eta_seconds(250, 300, 25.0, start_step=200) == pytest.approx(25.0)
    assert "ETA 25s" in format_step_line(250, 300, 1.0, 1.0, 0.5, 25.0, start_step=200)
    assert math.isnan(eta_seconds(0, 300, 0.0))
    assert format_duration(float("nan")) == "?"


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m")])
def test_durations_are_short(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_bars_count_and_quiet_turns_them_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with progress_bar(10, desc="embed") as bar:
        bar.update(4)
        bar.update(6)
    err = capsys.readouterr().err
    assert "embed" in err and "10/10" in err and "img/s" in err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with progress_bar(10, desc="embed") as bar:
        bar.update(10)
        bar.write("named anyway")
    assert capsys.readouterr().err == "named anyway\n"
