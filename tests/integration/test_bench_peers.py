"""``dml-dist bench peers --quick`` end to end: PML losses in a plain loop on both backbones, the
same loss in the plain loop, and ``dml-dist train`` through the command line, on the same batches;
one table with finite Recall@1 and samples/s for every row and the overhead ratio; the PML rows
at two step budgets (``--peer-steps``) from one run each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dml_dist.bench.peers.models import Conv4BN
from dml_dist.bench.peers.plain_loop import steady_samples_per_second
from dml_dist.cli import main
from dml_dist.config import DataConfig
from tests.conftest import REPO, set_args, small_data_settings


def test_quick_peer_bench_prints_every_row_with_finite_figures(
    small_data: DataConfig, ray_session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "peers.json"
    args = ["bench", "peers", "--quick", "--config", str(REPO / "configs" / "quickstart.yaml"), "--data", "procedural"]
    args += [
        "--steps",
        "3",
        "--peer-steps",
        "2,3",
        "--peer-losses",
        "ms,triplet",
        "--json",
        str(report_path),
        "--runs",
        str(tmp_path / "runs"),
    ]
    args += set_args({**small_data_settings(small_data), "mining.enabled": False, "train.workers": 2})
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    names = [(row["name"], row["backbone"]) for row in report["rows"]]
    assert len(names) == 10 and len(set(names)) == 10  # 2 PML losses x 2 backbones x 2 budgets, + 2
    assert sum("PML" in name for name, _ in names) == 8 and not any("N-pair" in name for name, _ in names)
    assert sum(backbone.startswith("Conv-4") for _, backbone in names) == 4
    assert sum(name.endswith("@ 2 steps") for name, _ in names) == 4
    assert names[-2][0].startswith("plain loop, dml-dist npair_mc") and names[-1][0].startswith("dml-dist train")
    for row in report["rows"]:
        assert 0.0 <= row["recall_1"] <= 1.0 and math.isfinite(row["map_at_r"]), row
        assert row["samples_per_second"] > 0 and math.isfinite(row["samples_per_second"]), row
    assert report["overhead_ratio"] > 0 and math.isfinite(report["overhead_ratio"])
    assert report["steps"] == 3 and report["batch"] == "16 x 2"
    assert (tmp_path / "runs" / "seed0" / "embedder.pt").is_file()
    out = capsys.readouterr().out
    assert "| method | backbone | R@1 | MAP@R | samples/s |" in out
    assert "system overhead ratio" in out
    # --runs over a user's own runs: refused before any row trains, nothing deleted.
    (tmp_path / "mine" / "seed0").mkdir(parents=True)
    (tmp_path / "mine" / "seed0" / "notes.txt").write_text("keep")
    assert main([*args[: args.index("--runs") + 1], str(tmp_path / "mine"), *args[args.index("--runs") + 2 :]]) == 2
    assert "was not written by bench peers" in capsys.readouterr().err
    assert (tmp_path / "mine" / "seed0" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize(("size", "features"), [(28, 64), (32, 256)])
def test_conv4_flattens_its_last_map(size: int, features: int) -> None:
    model = Conv4BN(1, size, 16)
    assert model.head.in_features == features
    assert model(torch.zeros(3, 1, size, size)).shape == (3, 16)


def test_throughput_leaves_the_first_step_out() -> None:
    assert steady_samples_per_second([10, 20, 20], [5.0, 1.0, 1.0]) == pytest.approx(20.0)
    assert steady_samples_per_second([10], [2.0]) == pytest.approx(5.0)


def test_an_unknown_backbone_is_refused_before_any_training() -> None:
    from dml_dist.bench.peers.suite import run_peers_bench

    with pytest.raises(ValueError, match="--backbones: unknown backbone 'resnet'"):
        run_peers_bench(backbones=("config", "resnet"))
    with pytest.raises(ValueError, match="--peer-losses: unknown recipe 'arcface'"):
        run_peers_bench(peer_losses=("ms", "arcface"))
