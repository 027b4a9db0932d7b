"""No shard URL reaches a shell: a URL with shell syntax, or of an unknown scheme, is refused at
load with one line naming it, and nothing it names is run (issue 25, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dml_dist.cli import main
from dml_dist.data.decode_spec import DecodeSpec
from dml_dist.data.stream_loader import StreamingClassLoader
from dml_dist.data.tar_stream import expand_urls, stream_samples
from dml_dist.storage import open_input as open_url
from tests.conftest import REPO


def _injection(marker: Path) -> str:
    """The issue's URL: ``pipe:aws s3 cp {url} -`` through ``sh -c`` ran ``id`` into the marker."""
    return f"s3://bucket/shard-000000.tar;id>{marker};#"


def test_a_url_with_shell_syntax_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "x"
    url = _injection(marker)
    with pytest.raises(ValueError, match=r"^data: shard URL 's3://bucket/shard-000000.tar;id>.*' holds characters"):
        expand_urls(url)
    with pytest.raises(ValueError, match="holds characters"):
        list(stream_samples([url]))
    with pytest.raises(ValueError, match="holds characters"):
        open_url(url)
    with pytest.raises(ValueError, match="holds characters"):
        StreamingClassLoader(url, DecodeSpec(12), seed=0, images_per_class=2, world_size=1, rank=0)
    assert not marker.exists()


def test_pipe_and_unknown_schemes_are_refused_naming_the_url(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for url, scheme in [(f"pipe:touch {marker}", "pipe"), ("ftp://host/shard-000000.tar", "ftp")]:
        with pytest.raises(ValueError, match=f"has scheme '{scheme}', not one of s3, gs"):
            list(stream_samples(url))
    assert not marker.exists()


def test_the_cli_refuses_such_a_url_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "x"
    args = ["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(tmp_path / "run")]
    args += ["--set", "data.mode=streaming", "--set", "mining.enabled=false"]
    args += ["--set", f"data.train_shards={_injection(marker)}", "--set", f"data.eval_shards={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "shard URL 's3://bucket/shard-000000.tar;id>" in err and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_plain_paths_and_known_schemes_pass(tmp_path: Path) -> None:
    shard = tmp_path / "odd name;x.tar"  # a local path is opened with open(): its characters are harmless
    shard.write_bytes(b"")
    assert expand_urls([str(shard)]) == [str(shard)]
    query = "s3://bucket/d/shard-{000000..000001}.tar?endpoint_override=127.0.0.1:9000&scheme=http"
    assert len(expand_urls(query)) == 2
    assert expand_urls("gs://bucket/shard-000000.tar") == ["gs://bucket/shard-000000.tar"]
