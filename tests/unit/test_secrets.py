"""Secrets stay out of output, files and jobs: a URI with credentials is refused where it enters
(train and submit, flag or config), and submit uploads the project without the user's keys,
packaged by Ray's own runtime-env packaging."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from dml_dist import jobs
from dml_dist.cli import main

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
URI = f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/dml"
DEAD_ADDRESS = "http://127.0.0.1:9"  # never reached: the refusal comes first


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text in p.read_text(errors="ignore")]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "quickstart", "--storage", URI],
        ["train", "quickstart", "--set", f"train.storage={URI}"],
        ["train", "quickstart", "--run-dir", f"{URI}/runs/a"],
        ["train", "quickstart", "--data", f"{URI}/shards"],
        ["submit", "quickstart", "--address", DEAD_ADDRESS, "--storage", URI, "--no-wait"],
        ["submit", "quickstart", "--address", DEAD_ADDRESS, "--set", f"train.storage={URI}", "--no-wait"],
        ["submit", "quickstart", "--address", DEAD_ADDRESS, "--run-dir", f"{URI}/runs/a", "--no-wait"],
        ["jobs", "list", "--address", f"http://ray:{SECRET}@127.0.0.1:9"],
    ],
    ids=[
        "train-storage",
        "train-config",
        "train-run-dir",
        "train-data",
        "submit-storage",
        "submit-config",
        "submit-run-dir",
        "jobs-address",
    ],
)
def test_a_uri_with_credentials_is_refused_and_never_repeated(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default run and data directories would be made here
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "credentials in it is refused" in err and "AWS_ACCESS_KEY_ID" in err and len(err.strip().splitlines()) == 1
    assert SECRET not in out + err
    assert _files_holding(tmp_path, SECRET) == []


def test_submit_uploads_the_project_without_the_users_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A working directory holding the usual secrets, packaged as Ray packages a job's working_dir."""
    from ray._private.runtime_env.packaging import create_package

    project = tmp_path / "project"
    files = {
        "configs/mine.yaml": "train: {steps: 5}\n",
        "notes.md": "the project's own file\n",
        ".aws/credentials": f"aws_secret_access_key = {SECRET}\n",
        ".ssh/id_ed25519": SECRET,
        ".env": f"AWS_SECRET_ACCESS_KEY={SECRET}\n",
        "sub/.env.local": SECRET,
        ".ray/auth_token": SECRET,
        "tls/server.pem": SECRET,
        "tokens/ray_token": SECRET,  # named by RAY_AUTH_TOKEN_PATH below
        "runs/old/metrics.jsonl": "{}\n",
        ".git/config": "[core]\n",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(project / "tokens" / "ray_token"))

    runtime_env = jobs.runtime_env_for(project)
    package = tmp_path / "package.zip"
    create_package(runtime_env["working_dir"], package, include_gitignore=True, excludes=runtime_env["excludes"])
    shipped = {name for name in zipfile.ZipFile(package).namelist() if not name.endswith("/")}
    assert shipped == {"configs/mine.yaml", "notes.md"}


def test_submit_refuses_a_home_directory_as_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text(SECRET)
    args = ["submit", "quickstart", "--address", DEAD_ADDRESS, "--working-dir", str(tmp_path), "--no-wait"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "that is your home directory" in err and len(err.strip().splitlines()) == 1
