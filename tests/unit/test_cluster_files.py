"""The cluster files are valid and agree with the code and with each other.

They cannot be started here (no Kubernetes, no cloud; Prometheus and Ray are exercised in
tests/integration), so each is checked against the schema of the software that reads it:
- the KubeRay RayCluster and RayJob against the CRD OpenAPI schemas of KubeRay v1.7.0, vendored
  in tests/data/schemas/ (source and checksums in its README). Kubernetes rejects unknown fields
  (strict field validation) although the published schemas do not say so: the test adds
  ``additionalProperties: false`` wherever a schema lists ``properties``, so typos fail here too;
- the cluster launcher YAML against ``ray/autoscaler/ray-schema.json`` of the installed Ray, and
  through Ray's own ``prepare_config`` / ``validate_config`` (what ``ray up`` runs first);
then for what schemas cannot say: token authentication on, 8 worker slots (the README example's
``--workers 8``), the storage mounted on every node, images tagged with the package version.
"""

from __future__ import annotations

import copy
import gzip
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from tests.conftest import REPO

CLUSTER = REPO / "cluster"
SCHEMAS = REPO / "tests" / "data" / "schemas" / "kuberay-v1.7.0"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE_CUDA = f"ghcr.io/dml-dist/dml-dist:{VERSION}-cuda"
IMAGE_CPU = f"dml-dist:{VERSION}-cpu"
EXAMPLE_WORKERS = 8  # README and the files' headers: `dml-dist submit ... --workers 8`
STORAGE = "/mnt/dml-dist"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_yaml_files_parse_and_name_the_right_kinds() -> None:
    raycluster = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    rayjob = _load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (raycluster["kind"], rayjob["kind"]) == ("RayCluster", "RayJob")
    assert "python -m dml_dist train" in rayjob["spec"]["entrypoint"]
    launcher = _load(CLUSTER / "ray-cluster.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    compose = _load(CLUSTER / "docker-compose.yml")
    assert {"ray-head", "ray-worker", "prometheus", "grafana"} <= set(compose["services"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):  # files the stack reads
                assert (CLUSTER / source).exists(), volume


def test_prometheus_watches_where_workers_register() -> None:
    config = _load(CLUSTER / "prometheus" / "prometheus.yml")
    files = [f for job in config["scrape_configs"] for sd in job["file_sd_configs"] for f in sd["files"]]
    assert "/tmp/ray/prom_metrics_service_discovery.json" in files
    assert config["rule_files"] == ["alerts.yml"]
    compose = _load(CLUSTER / "docker-compose.yml")["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose  # beside the config there too


def _promtool() -> str:
    """Debian's promtool (the prometheus package; ``.ci/run`` installs it and requires it)."""
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("DML_DIST_REQUIRE_PROMETHEUS"):
            raise RuntimeError("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return binary


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    for check in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        done = subprocess.run([_promtool(), *check], cwd=CLUSTER / "prometheus", capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def test_alert_rules_fire_on_a_stalled_run_and_a_slow_rank(tmp_path: Path) -> None:
    """``promtool test rules`` on one minute per sample: run ``stuck`` stops stepping at minute 5,
    run ``moving`` never does; rank 2 of run ``c`` spends 0.5 s per step loading and embedding
    its share, the others 0.2 s. The rules' annotations are dropped from the copy under test
    (``promtool check rules`` checks their templates above); the expressions are the shipped ones."""
    rules = _load(CLUSTER / "prometheus" / "alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    series = [_series("ray_dml_dist_steps_total", {"run": "stuck", "rank": rank}, "0+10x5 50x30") for rank in "01"] + [
        _series("ray_dml_dist_steps_total", {"run": "moving", "rank": "0"}, "0+10x35")
    ]
    forward_per_minute = {"0": "1", "1": "1", "2": "4"}  # seconds per minute, 10 steps per minute
    for rank, seconds in forward_per_minute.items():
        for phase, total in (("forward", seconds), ("data", "1")):
            labels = {"run": "c", "rank": rank, "phase": phase}
            series.append(_series("ray_dml_dist_step_phase_seconds_sum", labels, f"0+{total}x40"))
            series.append(_series("ray_dml_dist_step_phase_seconds_count", labels, "0+10x40"))
    expected = [
        ("DmlDistRunStalled", "12m", []),
        ("DmlDistRunStalled", "25m", [{"severity": "warning", "run": "stuck"}]),
        ("DmlDistSlowRank", "8m", []),
        ("DmlDistSlowRank", "30m", [{"severity": "warning", "run": "c", "rank": "2"}]),
    ]
    checks = [
        {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in alerts]}
        for name, at, alerts in expected
    ]
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    done = subprocess.run([_promtool(), "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every graph panel of the dashboard, also those inside its (collapsed) rows."""
    return [inner for panel in dashboard["panels"] for inner in panel.get("panels", [panel]) if inner["type"] != "row"]


def test_dashboard_queries_only_metrics_the_code_exports() -> None:
    dashboard = json.loads((CLUSTER / "grafana" / "dashboards" / "dml-dist.json").read_text())
    source = "".join(p.read_text() for p in (REPO / "dml_dist" / "observability").glob("*.py"))
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            for name in re.findall(r"\bray_(dml_dist_[a-z_]+)", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert f'"{base}"' in source, f"{panel['title']}: {name} is not exported"


def test_dashboard_folds_what_is_empty_by_default_and_keeps_to_the_run() -> None:
    dashboard = json.loads((CLUSTER / "grafana" / "dashboards" / "dml-dist.json").read_text())
    assert "__inputs" not in dashboard  # nothing asks for a data source the panels do not use
    rows = {p["title"]: p for p in dashboard["panels"] if p["type"] == "row"}
    on_top = [p for p in dashboard["panels"] if p["type"] != "row"]
    folded = {title: row["panels"] for title, row in rows.items()}
    assert all(row["collapsed"] and ("empty unless" in title or "empty on" in title) for title, row in rows.items())
    # Mining, cross-batch memory and GPU panels (empty by default) are inside collapsed rows only.
    empty_by_default = [
        p["title"]
        for p in on_top
        if p["title"].startswith("Mining") or p["description"].startswith(("[GPU]", "[memory]"))
    ]
    assert not empty_by_default, empty_by_default
    assert {("mining" in t.lower(), "memory" in t.lower(), "GPU" in t) for t in folded} == {
        (True, False, False), (False, True, False), (False, False, True)
    }  # fmt: skip
    assert sum(len(panels) for panels in folded.values()) >= 10
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) <= variables, target["expr"]
            if "ray_node_" in target["expr"]:  # Ray's node series: only the run's Ray session
                assert 'SessionName=~"$session"' in target["expr"], panel["title"]
    exprs = " ".join(t["expr"] for p in on_top for t in p["targets"])
    assert "ray_dml_dist_learning_rate" in exprs and "sum by (run, rank) (rate(ray_dml_dist_samples_total" in exprs
    throughput = next(p for p in on_top if p["title"].startswith("Global throughput"))
    assert "metrics.jsonl" in throughput["description"] and "curves.png" in throughput["description"]


def test_launch_scripts_pass_arguments_without_a_shell() -> None:
    for script in (REPO / "launch").glob("*.sh"):
        text = script.read_text()
        assert "eval " not in text and "sh -c" not in text, script
        assert text.startswith("#!/usr/bin/env bash\n"), script


# ---- KubeRay ---------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists ``properties`` and does not
    keep unknown fields on purpose (``x-kubernetes-preserve-unknown-fields``): what the API
    server's strict field validation does with a manifest."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    keeps_unknown = strict.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in strict and "additionalProperties" not in strict and not keeps_unknown:
        strict["additionalProperties"] = False
    return strict


def _crd_schema(plural: str) -> dict[str, Any]:
    with gzip.open(SCHEMAS / f"ray.io_{plural}.yaml.gz") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    """Kind -> the published v1 schema (KubeRay v1.7.0)."""
    return {"RayCluster": _crd_schema("rayclusters"), "RayJob": _crd_schema("rayjobs")}


def _crd_errors(schema: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(_strict(schema))  # OpenAPI v3.0 schemas are draft-4 based
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


KUBERAY = {"RayCluster": CLUSTER / "kuberay" / "raycluster.yaml", "RayJob": CLUSTER / "kuberay" / "rayjob.yaml"}


def _cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    return spec


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_manifest_matches_the_crd_schema(kind: str, crd_schemas: dict[str, dict[str, Any]]) -> None:
    manifest = _load(KUBERAY[kind])
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert _crd_errors(crd_schemas[kind], manifest) == []


def _claim_spec_schema(raycluster_schema: dict[str, Any]) -> dict[str, Any]:
    """PersistentVolumeClaimSpec as the CRD embeds it (pod volumes: ephemeral.volumeClaimTemplate)."""
    node = raycluster_schema
    for key in ["spec", "headGroupSpec", "template", "spec", "volumes"]:
        node = node["properties"][key]
    node = node["items"]["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]
    return node


def test_storage_claim_matches_the_claim_schema(crd_schemas: dict[str, dict[str, Any]]) -> None:
    claim = _load(CLUSTER / "kuberay" / "storage.yaml")
    assert (claim["apiVersion"], claim["kind"]) == ("v1", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod of every node mounts it
    assert _crd_errors(_claim_spec_schema(crd_schemas["RayCluster"]), claim["spec"]) == []
    claim["spec"]["accessMode"] = claim["spec"].pop("accessModes")
    assert _crd_errors(_claim_spec_schema(crd_schemas["RayCluster"]), claim["spec"])


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return mutate


def _rename(path: str, new_name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[new_name] = node.pop(last)

    return mutate


MISTAKES = {  # name -> (mutation of the cluster spec, what the one error must say)
    "typo in a field name": (_rename("workerGroupSpecs.0.replicas", "replica"), "'replica' was unexpected"),
    "typo in a pod field": (
        _rename("headGroupSpec.template.spec.containers.0.volumeMounts", "volumeMount"),
        "'volumeMount' was unexpected",
    ),
    "number given as a string": (_set("workerGroupSpecs.0.replicas", "2"), "'2' is not of type 'integer'"),
    "unknown auth mode": (_set("authOptions.mode", "tokens"), "'tokens' is not one of"),
    "container without a name": (
        lambda spec: spec["headGroupSpec"]["template"]["spec"]["containers"][0].pop("name"),
        "'name' is a required property",
    ),
    "malformed quantity": (
        _set("headGroupSpec.template.spec.containers.0.resources.limits.memory", "16 GB"),
        "'16 GB' does not match",
    ),
}


@pytest.mark.parametrize("kind", sorted(KUBERAY))
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_kuberay_schema_check_catches_mistakes(kind: str, mistake: str, crd_schemas: dict[str, dict[str, Any]]) -> None:
    manifest = _load(KUBERAY[kind])
    mutate, expected = MISTAKES[mistake]
    mutate(_cluster_spec(manifest))
    (error,) = _crd_errors(crd_schemas[kind], manifest)
    assert expected in error


def test_published_crd_schema_alone_lets_typos_through(crd_schemas: dict[str, dict[str, Any]]) -> None:
    """Why the check adds ``additionalProperties: false``: without it a misspelt field passes."""
    manifest = _load(KUBERAY["RayCluster"])
    MISTAKES["typo in a field name"][0](manifest["spec"])
    assert list(jsonschema.Draft4Validator(crd_schemas["RayCluster"]).iter_errors(manifest)) == []


def _pod_specs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_cluster_starts_what_the_readme_submits(kind: str) -> None:
    text = KUBERAY[kind].read_text()
    manifest = yaml.safe_load(text)
    spec = _cluster_spec(manifest)
    # token authentication (KubeRay generates the token and sets RAY_AUTH_* in every container)
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"] == ray.__version__  # token auth needs Ray >= 2.52 (KubeRay's own check)
    # worker slots: one Ray Train worker per GPU, and a CPU for each beside its data loading
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0", "the head hosts no training worker"
    slots = 0
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert int(limits["cpu"]) >= 2 * int(limits["nvidia.com/gpu"])
        slots += group["replicas"] * int(limits["nvidia.com/gpu"])
    assert slots == EXAMPLE_WORKERS
    assert f"--workers {EXAMPLE_WORKERS}" in text  # the header's submit line says the same
    # storage: the ReadWriteMany claim on every pod, at one path, also in DML_DIST_STORAGE
    claim = _load(CLUSTER / "kuberay" / "storage.yaml")  # checked in test_storage_claim_matches_the_claim_schema
    for pod in _pod_specs(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == STORAGE]
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": "DML_DIST_STORAGE", "value": STORAGE} in container["env"]
        assert container["image"] == IMAGE_CUDA
        assert pod["securityContext"]["runAsUser"] != 0
    if kind == "RayJob":
        args = shlex.split(manifest["spec"]["entrypoint"])
        assert args[:4] == ["python", "-m", "dml_dist", "train"]
        assert (REPO / Path(args[4]).relative_to("/app")).is_file()  # the Dockerfile copies configs/ to /app
        assert args[args.index("--workers") + 1] == str(EXAMPLE_WORKERS)
        assert args[args.index("--storage") + 1] == STORAGE
        from dml_dist.cli import build_parser

        parsed = build_parser().parse_args(args[3:])  # the CLI itself accepts the entrypoint
        assert (parsed.storage, parsed.workers, parsed.address) == (STORAGE, EXAMPLE_WORKERS, "auto")
        # A retry (backoffLimit) continues the same named run from its checkpoint, or starts it.
        assert manifest["spec"]["backoffLimit"] >= 1
        assert parsed.resume == "auto" and parsed.run_dir and not Path(parsed.run_dir).is_absolute()


@pytest.mark.parametrize("kind", sorted(KUBERAY))
def test_kuberay_pods_run_unprivileged_with_bounded_scratch(kind: str) -> None:
    spec = _cluster_spec(_load(KUBERAY[kind]))
    for pod in _pod_specs(spec):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0 and context["runAsGroup"] != 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            }
            resources = container["resources"]
            assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"]


# ---- cluster launcher ------------------------------------------------------------------------


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    schema: dict[str, Any] = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    return schema


def test_launcher_config_passes_rays_own_checks() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    launcher = _load(CLUSTER / "ray-cluster.yaml")
    jsonschema.Draft7Validator(_ray_schema()).validate(launcher)
    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` runs before anything else


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["docker"].update(run_option=c["docker"].pop("run_options")), "'run_option' was unexpected"),
        (lambda c: c.update(file_mount=c.pop("file_mounts")), "'file_mount' was unexpected"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="2"), "'2' is not of type 'integer'"),
        (lambda c: c.pop("provider"), "'provider' is a required property"),
    ],
    ids=["typo in docker", "typo at the top", "number given as a string", "no provider"],
)
def test_launcher_schema_check_catches_mistakes(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    launcher = _load(CLUSTER / "ray-cluster.yaml")
    mutate(launcher)
    (error,) = jsonschema.Draft7Validator(_ray_schema()).iter_errors(launcher)
    assert expected in error.message


def test_launcher_turns_token_auth_on_and_mounts_the_storage() -> None:
    launcher = _load(CLUSTER / "ray-cluster.yaml")
    docker = launcher["docker"]
    assert docker["image"] == IMAGE_CUDA
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]  # every process in every container
    assert f"--env DML_DIST_STORAGE={STORAGE}" in docker["run_options"]
    assert f"--volume {STORAGE}:{STORAGE}" in docker["run_options"]
    assert any(f"{STORAGE}" in c and "mount " in c for c in launcher["initialization_commands"])
    # the token made before `ray up` reaches every node, and no node starts Ray without it
    assert launcher["file_mounts"]["~/.ray"] == "~/.ray"
    for commands in (launcher["head_start_ray_commands"], launcher["worker_start_ray_commands"]):
        check = next(i for i, c in enumerate(commands) if "test -s ~/.ray/auth_token" in c)
        start = next(i for i, c in enumerate(commands) if c.startswith("ray start"))
        assert check < start
    # the image is complete: nothing installed at start (the AWS defaults would pip-install)
    assert launcher["setup_commands"] == launcher["head_setup_commands"] == launcher["worker_setup_commands"] == []
    nodes = launcher["available_node_types"]
    assert nodes[launcher["head_node_type"]]["resources"]["CPU"] == 0
    slots = sum(n["min_workers"] * n["resources"].get("GPU", 0) for n in nodes.values())
    assert slots == EXAMPLE_WORKERS and launcher["max_workers"] == sum(n["max_workers"] for n in nodes.values())
    assert f"--workers {EXAMPLE_WORKERS}" in (CLUSTER / "ray-cluster.yaml").read_text()


# ---- docker-compose, Dockerfile, packaging ---------------------------------------------------


def test_compose_makes_the_token_before_ray_starts_and_shares_the_storage() -> None:
    services = _load(CLUSTER / "docker-compose.yml")["services"]
    token = services["ray-token"]
    assert token["command"][-1] == "ray get-auth-token --generate > /dev/null"
    (auth_volume,) = [v.split(":")[0] for v in token["volumes"] if v.split(":")[1] == "/home/ray/.ray"]
    storage_volumes = set()
    for name in ("ray-head", "ray-worker"):
        service = services[name]
        assert service["image"] == IMAGE_CPU
        assert service["depends_on"]["ray-token"] == {"condition": "service_completed_successfully"}
        assert service["environment"]["RAY_AUTH_MODE"] == "token"
        assert service["environment"]["DML_DIST_STORAGE"] == STORAGE
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts["/home/ray/.ray"] == auth_volume
        storage_volumes.add(mounts[STORAGE])
    assert len(storage_volumes) == 1  # one volume, seen by both nodes
    assert token["image"] == IMAGE_CPU and token["build"]["target"] == "cpu"


def test_compose_grafana_has_no_default_password() -> None:
    text = (CLUSTER / "docker-compose.yml").read_text()
    grafana = yaml.safe_load(text)["services"]["grafana"]["environment"]
    # Compose refuses to start without the variable (`:?`), so Grafana never runs with admin/admin.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", grafana["GF_SECURITY_ADMIN_PASSWORD"])
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "admin/admin" not in text


def _stages(dockerfile: str) -> dict[str, str]:
    """Target name -> its instructions."""
    parts = re.split(r"^FROM \S+ AS (\w+)\s*$", dockerfile, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_pins_what_the_tests_run_with_and_runs_unprivileged() -> None:
    stages = _stages((REPO / "Dockerfile").read_text())
    assert set(stages) == {"cpu", "cuda"}
    for name, text in stages.items():
        assert "torch==" + importlib.metadata.version("torch").split("+")[0] in text
        assert f'"ray[train,default]=={ray.__version__}"' in text
        assert "deepspeed==" + importlib.metadata.version("deepspeed") in text
        assert f'".[{name.replace("cuda", "gpu")}]"' in text  # faiss through the extra, no swapping
        assert "uninstall" not in text
        assert text.index("torch==") < text.index("ray[train"), "torch goes in first"
        users = re.findall(r"^USER (\S+)", text, flags=re.M)
        assert users and users[-1] not in ("root", "0"), name
    assert "faiss-cpu==" + importlib.metadata.version("faiss-cpu") in stages["cpu"]
    assert "python3.11 -m venv" in stages["cuda"]  # Ubuntu 22.04's python3 is 3.10
    assert re.search(r"^ARG CPU_BASE=python:3\.11-", (REPO / "Dockerfile").read_text(), flags=re.M)


def test_pyproject_extras_choose_faiss_and_dockerignore_keeps_the_context_small() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("faiss")]
    assert project["optional-dependencies"]["cpu"] == ["faiss-cpu>=1.8"]
    (gpu,) = project["optional-dependencies"]["gpu"]
    assert re.fullmatch(r"faiss-gpu-cu12==[0-9][0-9a-z.]*", gpu)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs", "data/cache"} <= set(ignored)
    copied = re.findall(r"^COPY (.+) \./", (REPO / "Dockerfile").read_text(), flags=re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in ignored and (REPO / source).exists(), source
