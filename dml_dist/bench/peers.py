"""``dml-dist bench peers``: pytorch-metric-learning in a plain loop against dml-dist, same images.

The peer is what a user runs today without dml-dist: pytorch-metric-learning (PML) losses in a
plain single-process PyTorch loop with Adam. Every row trains for the same number of steps on
the same batches (N classes x K images of the dml-dist config: the class list of step t is
``random_classes(seed, t)`` and the images are drawn and decoded by the same ``ClassBatchLoader``,
augmentation included, so a plain-loop step sees exactly the images of dml-dist's global batch
at step t), and every row is evaluated by the same code (``eval/heldout.py``'s
``evaluate_shards``: faiss leave-one-out retrieval on the held-out classes), so Recall@1 means
the same thing in every row.

Rows:

- PML ``NPairsLoss`` in Sohn's form (dot product of unnormalized embeddings) with its L2 penalty
  (``LpRegularizer(power=2)``, weight 0.002 on the mean squared norm); one positive pair per
  class of the batch, as PML picks them;
- PML ``TripletMarginLoss`` (margin 0.1, normalized L2 distance) on the triplets of
  ``TripletMarginMiner(type_of_triplets="semihard")``;
- PML ``MultiSimilarityLoss`` (alpha 2, beta 50, base 0.5) on the pairs of
  ``MultiSimilarityMiner(epsilon=0.1)``: the paper's defaults;

each on two backbones: the config's own (``models/embedder.py``'s ``build_model``, as
configured) and the peer's usual Conv-4 (``Conv4BN`` below: 4 x [conv3x3 64, ``nn.BatchNorm2d``,
ReLU, max-pool 2], the last map flattened (2 x 2 x 64 at 32 px, 1 x 1 x 64 at 28 px), then a
linear head to the config's embedding size). Then:

- "plain loop, dml-dist loss": the config's loss (``losses/``, single process) and backbone in the
  same plain loop, with the config's optimizer settings (AdamW, ``engine.lr`` scaled as the
  engine scales it, ``engine.weight_decay``; no schedule). It does the arithmetic of a dml-dist
  step without the system, so it is the denominator of the overhead ratio;
- "dml-dist": ``dml-dist train CONFIG`` through the real command line (``cli.main``: Ray Train
  workers, DeepSpeed, gloo all-gather, the loader), ``train.workers`` workers of one CPU thread
  each; the plain loop runs with as many torch threads as dml-dist has workers (the same cores).

Throughput: samples / second of training steps (data loading + forward + backward + optimizer
step, evaluation excluded), the first step left out (lazy initialization), for every row; for
dml-dist it is read from ``metrics.jsonl`` (``train.log_every=1``: each step's global batch and
seconds). The overhead ratio is dml-dist's samples/s over the plain loop's with dml-dist's loss
on the same backbone: above 1 means the system (data-parallel workers) more than pays for itself.

``--seeds 0,1,2`` repeats every row per seed (the batches and initial weights change with the
seed) and reports the mean and the spread (max - min) / 2. ``--quick`` is a pipeline check (a few
steps, N = 16), not results.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dml_dist.config.loader import load_config
from dml_dist.config.schema import ExperimentConfig

QUICK_STEPS = 6
QUICK_N = 16
PEER_LR = 1e-3


class Conv4BN(nn.Module):
    """The peer's Conv-4: 4 x [conv3x3, BatchNorm2d, ReLU, max-pool 2], flattened map, linear head.

    [B, C, S, S] -> [B, embedding_dim]; the flattened map is 64 x (S // 16)^2 features (floors at
    each pooling: 28 px gives 1 x 1, 32 px gives 2 x 2).
    """

    def __init__(self, in_channels: int, image_size: int, embedding_dim: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        previous, side = in_channels, image_size
        for _ in range(4):
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous, side = width, side // 2
        if side < 1:
            raise ValueError(f"bench peers: Conv-4 needs images of at least 16 px, got {image_size}")
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width * side * side, embedding_dim)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images_BCHW).flatten(1))


@dataclass(frozen=True)
class PeerLoss:
    """A PML loss (and miner) as the peer configures it."""

    name: str
    build: Callable[[], tuple[nn.Module, nn.Module | None]]


def _npair() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, regularizers

    return losses.NPairsLoss(
        embedding_regularizer=regularizers.LpRegularizer(power=2), embedding_reg_weight=0.002
    ), None


def _triplet() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, miners

    return losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")


def _multi_similarity() -> tuple[nn.Module, nn.Module | None]:
    from pytorch_metric_learning import losses, miners

    return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)


PEER_LOSSES = (  # the strongest peer first: a run cut short still has it
    PeerLoss("PML multi-similarity + MS miner", _multi_similarity),
    PeerLoss("PML N-pair (Sohn, L2 0.002)", _npair),
    PeerLoss("PML triplet + semihard miner", _triplet),
)
BACKBONE_NAMES = ("config", "conv4_bn")


def describe_backbone(config: ExperimentConfig, backbone: str) -> str:
    if backbone == "conv4_bn":
        side = config.data.decode_size // 16
        return f"Conv-4 BN ({side}x{side}x64 flat)"
    model = config.model
    if model.backbone != "small_cnn":
        return model.backbone
    pool = f"{model.pool_grid}x{model.pool_grid} flat" if model.pool_grid else "GAP"
    return f"small_cnn {model.channels} {model.norm} norm, {pool}"


def build_backbone(config: ExperimentConfig, backbone: str) -> nn.Module:
    from dml_dist.models.embedder import build_model

    if backbone == "conv4_bn":
        return Conv4BN(config.model.in_channels, config.data.decode_size, config.model.embedding_dim)
    return build_model(config.model)


def steady_samples_per_second(samples: list[int], seconds: list[float]) -> float:
    """Samples / second over the steps after the first (all of them for a one-step run)."""
    skip = 1 if len(samples) > 1 else 0
    return float(sum(samples[skip:]) / max(sum(seconds[skip:]), 1e-9))


def train_plain(
    config: ExperimentConfig,
    train_shards: Path,
    model: nn.Module,
    loss_fn: nn.Module,
    miner: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    threads: int,
) -> float:
    """Train ``model`` in a plain loop for ``train.steps`` steps on dml-dist's batches; returns samples/s."""
    from dml_dist.data.decode_spec import DecodeSpec
    from dml_dist.data.indexed_loader import ClassBatchLoader
    from dml_dist.data.sampler import random_classes
    from dml_dist.data.shard_index import IndexedShards

    seed, n, k = config.train.seed, config.batch.num_classes, config.batch.images_per_class
    loader = ClassBatchLoader(
        IndexedShards(train_shards),
        DecodeSpec.from_config(config.data),
        seed=seed,
        images_per_class=k,
        world_size=1,
        rank=0,
        min_images_policy=config.data.min_images_policy,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    samples: list[int] = []
    seconds: list[float] = []
    model.train()
    try:
        for step in range(config.train.steps):
            started = time.perf_counter()
            images, labels = loader.load(step, random_classes(seed, step, loader.num_classes, n))
            emb_BD = model(images)
            loss = loss_fn(emb_BD, labels, miner(emb_BD, labels)) if miner is not None else loss_fn(emb_BD, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - started)
            samples.append(int(images.shape[0]))
            if not math.isfinite(float(loss.detach())):
                raise ValueError(f"bench peers: the loss is not finite at step {step + 1}")
    finally:
        torch.set_num_threads(previous_threads)
        loader.close()
    return steady_samples_per_second(samples, seconds)


def evaluate(model: nn.Module, config: ExperimentConfig, eval_shards: Path) -> dict[str, Any]:
    """Held-out retrieval with dml-dist's own evaluation (every row the same code)."""
    from dml_dist.eval.heldout import evaluate_shards

    held = evaluate_shards(model, eval_shards, config.data, config.eval, torch.device("cpu"), config.train.seed)
    return {"recall": {str(k): v for k, v in held.report.recall.items()}, "map_at_r": held.report.map_at_r}


def run_peer_row(
    config: ExperimentConfig, paths: tuple[Path, Path], loss: PeerLoss, backbone: str, lr: float, threads: int
) -> dict[str, Any]:
    torch.manual_seed(config.train.seed)
    model = build_backbone(config, backbone)
    loss_fn, miner = loss.build()
    optimizer = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=lr)
    rate = train_plain(config, paths[0], model, loss_fn, miner, optimizer, threads)
    return {"samples_per_second": rate, **evaluate(model, config, paths[1])}


def run_plain_dml_loss_row(config: ExperimentConfig, paths: tuple[Path, Path], threads: int) -> dict[str, Any]:
    from dml_dist.losses import build_loss

    torch.manual_seed(config.train.seed)
    model = build_backbone(config, "config")
    loss_fn = build_loss(config.loss.name, **config.loss.params)
    engine = config.engine
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *loss_fn.parameters()],
        lr=engine.scaled_lr(config.batch.num_classes),
        weight_decay=engine.weight_decay,
    )
    rate = train_plain(config, paths[0], model, loss_fn, None, optimizer, threads)
    return {"samples_per_second": rate, **evaluate(model, config, paths[1])}


def run_dml_dist_row(
    config_path: str | Path, overrides: list[str], paths: tuple[Path, Path], run_dir: Path
) -> dict[str, Any]:
    """``dml-dist train`` through the command line; the figures from its run directory."""
    import shutil

    from dml_dist.cli import main
    from dml_dist.eval.api import load_embedder
    from dml_dist.train import run_files

    if run_dir.exists():
        shutil.rmtree(run_dir)
    # No -q: it would set this process's console (TQDM_DISABLE, library levels) for good.
    args = ["train", str(config_path), "--run-dir", str(run_dir)]
    args += ["--data", str(paths[0]), "--eval-data", str(paths[1])]
    for item in overrides:
        args += ["--set", item]
    if main(args) != 0:
        raise ValueError(f"bench peers: dml-dist train failed (run directory {run_dir})")
    rows = [json.loads(line) for line in (run_dir / run_files.METRICS).read_text().splitlines() if line.strip()]
    rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
    rate = steady_samples_per_second([r["global_batch"] for r in rows], [r["step_seconds"] for r in rows])
    embedder = load_embedder(run_dir, "cpu")
    return {"samples_per_second": rate, **evaluate(embedder.model, embedder.config, paths[1])}


def resolve_paths(config: ExperimentConfig, data: str | None, eval_data: str | None, cache: Path) -> tuple[Path, Path]:
    """(train shards, held-out shards): ``omniglot`` (the alphabet split of ``bench reproduce``),
    ``procedural`` (the config's procedural set), or a shard directory (with ``eval_data``)."""
    from dml_dist.data.datasets import resolve_data

    if data == "omniglot":
        from dml_dist.bench.reproduce import prepare_omniglot

        return prepare_omniglot(cache)
    if data == "procedural":
        config.data.train_shards = config.data.eval_shards = None
    elif data is not None:
        if eval_data is None:
            raise ValueError("--eval-data: a shard directory of held-out classes is needed with --data DIR")
        config.data.train_shards, config.data.eval_shards = data, eval_data
    resolved = resolve_data(config.data)
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
) -> dict[str, Any]:
    """Train every row (per seed), print the table, return the figures. ``backbones``: the PML
    rows' backbones (``config``, ``conv4_bn``), for a config whose backbone already is a Conv-4."""
    from dml_dist.bench.reproduce import OMNIGLOT_ZIP, REPO

    unknown = sorted(set(backbones) - set(BACKBONE_NAMES))
    if unknown:
        raise ValueError(f"--backbones: unknown backbone {unknown[0]!r}; valid: {', '.join(BACKBONE_NAMES)}")
    if data is None:
        data = "omniglot" if OMNIGLOT_ZIP.is_file() else "procedural"
    steps = steps if steps is not None else (QUICK_STEPS if quick else None)
    n = n if n is not None else (QUICK_N if quick else None)
    fixed = list(overrides or [])
    fixed += [f"train.steps={steps}"] if steps is not None else []
    fixed += [f"batch.num_classes={n}"] if n is not None else []
    runs = runs or REPO / "runs" / "bench-peers"
    seeds = seeds or [0]
    base = load_config(config_path, fixed)
    paths = resolve_paths(base, data, eval_data, REPO / "data" / "cache")
    data_overrides = [f"data.train_shards={json.dumps(str(paths[0]))}", f"data.eval_shards={json.dumps(str(paths[1]))}"]
    per_seed: dict[str, list[dict[str, Any]]] = {}
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
        for backbone in backbones:
            for loss in PEER_LOSSES:
                name = f"{loss.name} | {describe_backbone(config, backbone)}"
                _record(per_seed, name, run_peer_row(config, paths, loss, backbone, peer_lr, threads))
        name = f"plain loop, dml-dist {config.loss.name} | {describe_backbone(config, 'config')}"
        _record(per_seed, name, run_plain_dml_loss_row(config, paths, threads))
        name = f"dml-dist train, {threads} workers, {config.loss.name} | {describe_backbone(config, 'config')}"
        _record(per_seed, name, run_dml_dist_row(config_path, dml_overrides, paths, runs / f"seed{seed}"))
    rows = [_summarize(name, results) for name, results in per_seed.items()]
    plain, system = rows[-2], rows[-1]
    report = {
        "config": str(config_path),
        "data": {"train": str(paths[0]), "eval": str(paths[1])},
        "steps": base.train.steps,
        "batch": f"{base.batch.num_classes} x {base.batch.images_per_class}",
        "seeds": seeds,
        "workers": base.train.workers,
        "peer_lr": peer_lr,
        "rows": rows,
        "overhead_ratio": system["samples_per_second"] / plain["samples_per_second"],
    }
    print(format_table(report), flush=True)
    return report


def _record(per_seed: dict[str, list[dict[str, Any]]], name: str, result: dict[str, Any]) -> None:
    per_seed.setdefault(name, []).append(result)
    print(f"peers: {name}: R@1 {result['recall']['1']:.3f}, {result['samples_per_second']:.0f} samples/s", flush=True)


def _summarize(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    r1 = np.array([r["recall"]["1"] for r in results])
    rates = np.array([r["samples_per_second"] for r in results])
    method, _, backbone = name.partition(" | ")
    return {
        "name": method,
        "backbone": backbone,
        "recall_1": float(r1.mean()),
        "recall_1_spread": float((r1.max() - r1.min()) / 2),
        "recall_1_per_seed": r1.tolist(),
        "map_at_r": float(np.mean([r["map_at_r"] for r in results])),
        "samples_per_second": float(rates.mean()),
    }


def format_table(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    spread = len(seeds) > 1
    lines = [
        f"bench peers: {report['config']}, {report['steps']} steps, batch {report['batch']}, "
        f"seed{'s' if spread else ''} {','.join(str(s) for s in seeds)}; held out: {report['data']['eval']}",
        "| method | backbone | R@1 | MAP@R | samples/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        r1 = f"{row['recall_1']:.3f}" + (f" +- {row['recall_1_spread']:.3f}" if spread else "")
        lines.append(
            f"| {row['name']} | {row['backbone']} | {r1} | {row['map_at_r']:.3f} | {row['samples_per_second']:.0f} |"
        )
    lines.append(
        f"system overhead ratio (dml-dist samples/s / plain loop samples/s, same loss, backbone and "
        f"{report['workers']} cores): {report['overhead_ratio']:.2f}"
    )
    return "\n".join(lines)
