"""Storage URIs: where run files go, and the error a storage nobody can open gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist import storage
from dml_dist.config.schema import ExperimentConfig
from dml_dist.train.storage import resolve_run_dir, resolve_storage

S3 = "s3://bucket/team?endpoint_override=127.0.0.1:9000&scheme=http"


def test_join_puts_path_parts_before_the_file_system_options() -> None:
    assert storage.join(S3, "runs", "exp") == "s3://bucket/team/runs/exp?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("gs://b/", "/data/") == "gs://b/data"


def test_a_run_directory_in_a_uri_storage_stays_a_uri() -> None:
    assert resolve_run_dir(None, "quickstart", S3) == storage.join(S3, "runs/quickstart")
    assert resolve_run_dir("runs/mine", "quickstart", S3) == storage.join(S3, "runs/mine")
    assert resolve_run_dir("s3://other/run", "quickstart", None) == "s3://other/run"


def test_a_storage_uri_pyarrow_cannot_open_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DML_DIST_STORAGE", raising=False)
    with pytest.raises(ValueError, match=r"^storage: cannot open nosuch://bucket/x"):
        resolve_storage("nosuch://bucket/x", ExperimentConfig())
    assert resolve_storage("file:///mnt/shared", ExperimentConfig()) == "/mnt/shared"


def test_a_location_is_local_without_a_scheme_or_with_file() -> None:
    assert storage.local_path("runs/x") == Path("runs/x")
    assert storage.local_path("file:///mnt/shared/run") == Path("/mnt/shared/run")
    assert storage.local_path(Path("/tmp/a:b")) == Path("/tmp/a:b")  # a colon after the first part is a path
    assert storage.local_path("C:/data") == Path("C:/data")  # one letter: a drive, not a scheme
    for remote in (S3, "gs://b/x", "https://host/shard-000000.tar", "pipe:cat x"):
        assert storage.local_path(remote) is None, remote
    assert storage.join(Path("/r"), "checkpoints", "step-000001") == Path("/r/checkpoints/step-000001")
    assert storage.join("file:///r", "a") == Path("/r/a")


def test_one_set_of_operations_serves_a_path_and_a_file_uri_alike(tmp_path: Path) -> None:
    """Write, read, list, exclusive create and delete: the same calls, whatever kind the location is."""
    for location in (tmp_path / "plain", f"file://{tmp_path}/uri"):
        run = storage.join(location, "runs", "exp")
        assert storage.read_text(storage.join(run, "config.yaml")) is None
        assert storage.list_names(run) == []
        storage.write_bytes(storage.join(run, "config.yaml"), b"a: 1\n")
        assert storage.create_new(storage.join(run, "lease.json"), b"{}")
        assert not storage.create_new(storage.join(run, "lease.json"), b"{}")  # exclusive: a second taker fails
        storage.write_bytes(storage.join(run, "checkpoints", "step-000001", "complete.json"), b"{}")
        assert storage.list_names(run) == ["checkpoints", "config.yaml", "lease.json"]
        assert storage.list_dirs(run) == ["checkpoints"]
        assert storage.read_text(storage.join(run, "config.yaml")) == "a: 1\n"
        storage.delete_file(storage.join(run, "lease.json"))
        storage.delete_file(storage.join(run, "lease.json"))  # already gone: no error
        assert not storage.exists(storage.join(run, "lease.json"))
        assert not list(Path(str(storage.local_path(run))).glob("*.tmp"))  # local writes leave no temporary file
        storage.delete_dir(run)
        assert not storage.exists(run)
