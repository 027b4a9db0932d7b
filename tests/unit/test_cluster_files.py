"""The cluster files are well-formed and agree with the code (they cannot be started here:
no Docker engine, no Kubernetes; Prometheus and Ray are exercised in tests/integration)."""

from __future__ import annotations

import json
import re

import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster"


def test_yaml_files_parse_and_name_the_right_kinds() -> None:
    raycluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    rayjob = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (raycluster["kind"], rayjob["kind"]) == ("RayCluster", "RayJob")
    assert "python -m dml_dist train" in rayjob["spec"]["entrypoint"]
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert launcher["head_node_type"] in launcher["available_node_types"]
    compose = yaml.safe_load((CLUSTER / "docker-compose.yml").read_text())
    assert {"ray-head", "ray-worker", "prometheus", "grafana"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # files the stack reads (../runs is created by Docker)
                assert (CLUSTER / source).exists(), volume


def test_prometheus_watches_where_workers_register() -> None:
    config = yaml.safe_load((CLUSTER / "prometheus" / "prometheus.yml").read_text())
    files = [f for job in config["scrape_configs"] for sd in job["file_sd_configs"] for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files


def test_dashboard_queries_only_metrics_the_code_exports() -> None:
    dashboard = json.loads((CLUSTER / "grafana" / "dashboards" / "dml-dist.json").read_text())
    source = "".join(p.read_text() for p in (REPO / "dml_dist" / "observability").glob("*.py"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bray_(dml_dist_[a-z_]+)", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert f'"{base}"' in source, f"{panel['title']}: {name} is not exported"


def test_launch_scripts_pass_arguments_without_a_shell() -> None:
    for script in (REPO / "launch").glob("*.sh"):
        text = script.read_text()
        assert "eval " not in text and "sh -c" not in text, script
        assert text.startswith("#!/usr/bin/env bash\n"), script
