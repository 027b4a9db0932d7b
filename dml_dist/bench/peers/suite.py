"""``bench peers`` end to end: the data, every row per seed (the PML rows, the plain loop with
dml-dist's loss, ``dml-dist train``), the table and the report.

Data (``--data``): ``omniglot`` (the alphabet split of ``bench/omniglot.py``; the default when
the Omniglot zip is given with ``--omniglot`` or ``DML_DIST_OMNIGLOT``), ``procedural`` (the
config's procedural set; the default otherwise), or a training shard directory with
``--eval-data``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dml_dist import run_files
from dml_dist.bench import REPO
from dml_dist.bench.omniglot import omniglot_zip, prepare_omniglot, require_omniglot
from dml_dist.bench.peers.models import BACKBONE_NAMES, PEER_LOSS_KEYS, PEER_LOSSES, describe_backbone
from dml_dist.bench.peers.plain_loop import (
    RowResult,
    evaluate,
    run_peer_row,
    run_plain_dml_loss_row,
    steady_samples_per_second,
)
from dml_dist.bench.peers.table import format_table, summarize
from dml_dist.config.loader import load_config, replaced
from dml_dist.config.schema import ExperimentConfig

QUICK_STEPS = 6
QUICK_N = 16
PEER_LR = 1e-3


ROW_MARKER = ".bench-peers-row"
"""Written into each dml-dist row's run directory: only such a directory is replaced by a later run."""


def check_replaceable(run_dir: Path) -> None:
    """``ValueError`` unless ``run_dir`` is absent or an earlier ``bench peers`` row wrote it."""
    if run_dir.exists() and not (run_dir / ROW_MARKER).is_file():
        raise ValueError(f"--runs: {run_dir} exists and was not written by bench peers; choose another --runs")


def run_dml_dist_row(config: ExperimentConfig, eval_shards: Path, run_dir: Path) -> RowResult:
    """``dml-dist train``'s driver (``run_training``) on ``config``; the figures from its run
    directory. ``run_dir`` is replaced when an earlier ``bench peers`` wrote it, refused otherwise
    (``--runs`` pointing at a user's runs must not delete them)."""
    import os
    import shutil

    from dml_dist.eval.api import load_embedder
    from dml_dist.observability.logging import local_ray_env
    from dml_dist.train.launcher import run_training

    check_replaceable(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    if not os.environ.get("RAY_ADDRESS"):
        for key, value in local_ray_env().items():  # as `dml-dist train` starts its own local instance
            os.environ.setdefault(key, value)
    run_training(config, run_dir)
    (run_dir / ROW_MARKER).touch()
    rows = [json.loads(line) for line in (run_dir / run_files.METRICS).read_text().splitlines() if line.strip()]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
    rate = steady_samples_per_second([r["global_batch"] for r in rows], [r["step_seconds"] for r in rows])
    embedder = load_embedder(run_dir, "cpu")
    return RowResult(rate, evaluate(embedder.model, embedder.config, eval_shards))


def resolve_paths(
    config: ExperimentConfig, data: str, eval_data: str | None, cache: Path, omniglot: str | Path | None = None
) -> tuple[Path, Path]:
    """(train shards, held-out shards) of ``--data`` (see the module docstring)."""
    from dml_dist.data.datasets import resolve_data

    if data == "omniglot":
        return prepare_omniglot(require_omniglot(omniglot, "bench peers --data omniglot"), cache)
    if data == "procedural":
        shards: tuple[str | None, str | None] = (None, None)
    else:
        if eval_data is None:
            raise ValueError("--eval-data: a shard directory of held-out classes is needed with --data DIR")
        shards = (data, eval_data)
    resolved = resolve_data(replaced(config.data, {"train_shards": shards[0], "eval_shards": shards[1]}))
    if not isinstance(resolved.train, Path):
        raise ValueError("bench peers: the training shards must be a local shard directory (indexed mode)")
    return resolved.train, resolved.eval


def run_peers_bench(
    config_path: str | Path = "omniglot",
    overrides: list[str] | None = None,
    data: str | None = None,
    eval_data: str | None = None,
    steps: int | None = None,
    n: int | None = None,
    seeds: list[int] | None = None,
    quick: bool = False,
    peer_lr: float = PEER_LR,
    runs: Path | None = None,
    backbones: tuple[str, ...] = BACKBONE_NAMES,
    omniglot: str | Path | None = None,
    peer_steps: list[int] | None = None,
    peer_losses: tuple[str, ...] = PEER_LOSS_KEYS,
) -> dict[str, Any]:
    """Train every row (per seed), print the table, return the figures. ``backbones``: the PML
    rows' backbones (``config``, ``conv4_bn``), for a config whose backbone already is a Conv-4;
    ``omniglot``: the Omniglot zip (else ``$DML_DIST_OMNIGLOT``); ``peer_steps``: the PML rows'
    step budgets (default: the config's steps), each a row, from one run per loss and backbone
    evaluated after each budget, so a peer may train longer than dml-dist; ``peer_losses``: the
    PML recipes (``ms``, ``npair``, ``triplet``)."""
    unknown = sorted(set(backbones) - set(BACKBONE_NAMES))
    if unknown:
        raise ValueError(f"--backbones: unknown backbone {unknown[0]!r}; valid: {', '.join(BACKBONE_NAMES)}")
    unknown = sorted(set(peer_losses) - set(PEER_LOSS_KEYS))
    if unknown:
        raise ValueError(f"--peer-losses: unknown recipe {unknown[0]!r}; valid: {', '.join(PEER_LOSS_KEYS)}")
    if data is None:
        data = "omniglot" if omniglot_zip(omniglot) is not None else "procedural"
    steps = steps if steps is not None else (QUICK_STEPS if quick else None)
    n = n if n is not None else (QUICK_N if quick else None)
    fixed = list(overrides or [])
    fixed += [f"train.steps={steps}"] if steps is not None else []
    fixed += [f"batch.num_classes={n}"] if n is not None else []
    runs = runs or REPO / "runs" / "bench-peers"
    seeds = seeds or [0]
    for seed in seeds:  # before any row trains
        check_replaceable(runs / f"seed{seed}")
    base = load_config(config_path, fixed)
    paths = resolve_paths(base, data, eval_data, REPO / "data" / "cache", omniglot)
    data_overrides = [f"data.train_shards={json.dumps(str(paths[0]))}", f"data.eval_shards={json.dumps(str(paths[1]))}"]
    per_seed: dict[str, list[RowResult]] = {}
    for seed in seeds:
        run_overrides = [*fixed, *data_overrides, f"train.seed={seed}"]
        dml_overrides = [
            *run_overrides,
            "train.log_every=1",
            f"train.eval_every={base.train.steps}",
            "metrics.enabled=false",
            "eval.gallery_queries=0",
            "train.checkpoint_every=0",
        ]
        config = load_config(config_path, dml_overrides)
        threads = config.train.workers
        budgets = sorted(set(peer_steps or [config.train.steps]))
        for backbone in backbones:
            for loss in (one for one in PEER_LOSSES if one.key in peer_losses):
                results = run_peer_row(config, paths, loss, backbone, peer_lr, threads, budgets)
                for budget, result in results.items():
                    at = f" @ {budget} steps" if budgets != [config.train.steps] else ""
                    _record(per_seed, f"{loss.name}{at} | {describe_backbone(config, backbone)}", result)
        name = f"plain loop, dml-dist {config.loss.name} | {describe_backbone(config, 'config')}"
        _record(per_seed, name, run_plain_dml_loss_row(config, paths, threads))
        name = f"dml-dist train, {threads} workers, {config.loss.name} | {describe_backbone(config, 'config')}"
        _record(per_seed, name, run_dml_dist_row(config, paths[1], runs / f"seed{seed}"))
    rows = [summarize(name, results) for name, results in per_seed.items()]
    plain, system = rows[-2], rows[-1]
    report = {
        "config": str(config_path),
        "data": {"train": str(paths[0]), "eval": str(paths[1])},
        "steps": base.train.steps,
        "batch": f"{base.batch.num_classes} x {base.batch.images_per_class}",
        "seeds": seeds,
        "workers": base.train.workers,
        "peer_lr": peer_lr,
        "peer_steps": peer_steps or [base.train.steps],
        "peer_losses": list(peer_losses),
        "rows": rows,
        "overhead_ratio": system["samples_per_second"] / plain["samples_per_second"],
    }
    print(format_table(report), flush=True)
    return report


def _record(per_seed: dict[str, list[RowResult]], name: str, result: RowResult) -> None:
    per_seed.setdefault(name, []).append(result)
    print(f"peers: {name}: R@1 {result.report.recall[1]:.3f}, {result.samples_per_second:.0f} samples/s", flush=True)
