"""A real Prometheus scrapes a real training run through Ray's metrics agents; every Grafana
panel's PromQL returns data."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unit.test_cluster_files import dashboard_panels

DASHBOARD = REPO / "cluster" / "grafana" / "dashboards" / "dml-dist.json"


def _query_range(base: str, expr: str, start: float, end: float) -> list:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_every_dashboard_expression_returns_data(prometheus_server: str | None, trained_run: Path) -> None:
    if prometheus_server is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    window = json.loads((trained_run / "test-window.json").read_text())
    job = json.loads((trained_run / "eval.json").read_text())["job"]
    panels = dashboard_panels(json.loads(DASHBOARD.read_text()))  # also those in collapsed rows
    session = _query_range(
        prometheus_server, f'ray_dml_dist_steps_total{{run="{job}"}}', window["start"], window["end"] + 15
    )
    checked, missing = [], []
    for panel in panels:
        if panel["description"].startswith(("[GPU]", "[memory]")):
            continue  # data only on GPU workers, or with a cross-batch memory (off in this run)
        for target in panel["targets"]:
            expr = target["expr"].replace("$run", job).replace("$rank", ".*")
            expr = expr.replace("$session", session[0]["metric"]["SessionName"])
            series = _query_range(prometheus_server, expr, window["start"] - 5, window["end"] + 15)
            (checked if series else missing).append(f"{panel['title']}: {expr}")
    assert not missing, f"no data for: {missing}"
    assert len(checked) >= 10


def test_workers_are_discovered_with_their_run_and_rank(prometheus_server: str | None, trained_run: Path) -> None:
    if prometheus_server is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run installs it)")
    window = json.loads((trained_run / "test-window.json").read_text())
    job = json.loads((trained_run / "eval.json").read_text())["job"]
    series = _query_range(
        prometheus_server, f'ray_dml_dist_steps_total{{run="{job}"}}', window["start"], window["end"] + 15
    )
    assert sorted(s["metric"]["rank"] for s in series) == ["0", "1"]
    # Scraped while the workers trained: every rank's counter was read with steps done. (How far
    # it got before the workers exited depends on Ray's 10 s metric export and the 5 s scrape:
    # the 60-step run lasts a few such periods.)
    for s in series:
        seen = [float(v[1]) for v in s["values"]]
        assert 0 < max(seen) <= 60, (s["metric"], seen)
