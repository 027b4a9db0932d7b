"""Storage URIs: where run files go, and the error a storage nobody can open gives."""

from __future__ import annotations

import pytest

from dml_dist.config.schema import ExperimentConfig
from dml_dist.train import uri_storage
from dml_dist.train.storage import resolve_run_dir, resolve_storage

S3 = "s3://bucket/team?endpoint_override=127.0.0.1:9000&scheme=http"


def test_join_puts_path_parts_before_the_file_system_options() -> None:
    assert (
        uri_storage.join(S3, "runs", "exp") == "s3://bucket/team/runs/exp?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert uri_storage.join("gs://b/", "/data/") == "gs://b/data"


def test_a_run_directory_in_a_uri_storage_stays_a_uri() -> None:
    assert resolve_run_dir(None, "quickstart", S3) == uri_storage.join(S3, "runs/quickstart")
    assert resolve_run_dir("runs/mine", "quickstart", S3) == uri_storage.join(S3, "runs/mine")
    assert resolve_run_dir("s3://other/run", "quickstart", None) == "s3://other/run"


def test_a_storage_uri_pyarrow_cannot_open_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DML_DIST_STORAGE", raising=False)
    with pytest.raises(ValueError, match=r"^storage: cannot open nosuch://bucket/x"):
        resolve_storage("nosuch://bucket/x", ExperimentConfig())
    assert resolve_storage("file:///mnt/shared", ExperimentConfig()) == "/mnt/shared"
