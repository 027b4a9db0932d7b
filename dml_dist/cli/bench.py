"""``dml-dist bench SUITE``: one subcommand per suite (``dml_dist/bench/``), each with its own
flags; every suite prints its table and, with ``--json FILE``, writes its figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dml_dist.cli.parser import Commands

OMNIGLOT_HELP = "the Omniglot zip (images_background_small1.zip); env DML_DIST_OMNIGLOT"


def register(commands: Commands) -> None:
    bench = commands.add("bench", "benchmark suites: each prints a table; --json FILE also writes its figures")
    suites = commands.nested(bench, "suite")

    losses = _suite(suites, "losses", "loss forward+backward against pytorch-metric-learning and the matmul floor")
    losses.add_argument("--sizes", default="128,320,1000", help="comma-separated N")
    losses.add_argument("--repeats", type=int, default=7, help="timed repeats per case")
    losses.add_argument(
        "--memory-sizes", default="8192", help="cross-batch memory sizes M (comma-separated, '' = none)"
    )
    losses.set_defaults(run=run_losses)

    scaling = _suite(suites, "scaling", "samples/s with 1 and 2 workers, all-gather + loss share, GradCache memory")
    scaling.add_argument("--chunk-size", type=int, default=100, help="GradCache chunk of the chunked case")
    scaling.set_defaults(run=run_scaling)

    mining = _suite(suites, "mining", "class selection latency and bank update cost against the step time")
    mining.add_argument("--classes", type=int, default=100_000, help="C classes to select from")
    mining.set_defaults(run=run_mining)

    step = _suite(suites, "mining-step", "training step time with the mining service on over off (ratio, one run)")
    step.add_argument("--config", default="quickstart", help="the config both sides train")
    step.add_argument("--steps", type=int, default=150, help="steps of every run")
    step.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    step.add_argument("--ramp", type=int, default=20, help="mining warm-up and ramp steps (steady state after 2x)")
    step.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    step.set_defaults(run=run_mining_step)
    memory = _suite(suites, "memory-step", "samples/s of a small batch + cross-batch memory over a large batch")
    memory.add_argument("--config", default="quickstart", help="the config both sides train")
    memory.add_argument("--steps", type=int, default=60, help="steps of every run")
    memory.add_argument("--rounds", type=int, default=2, help="batch/memory pairs, alternated")
    memory.add_argument("--small-n", type=int, default=64, help="classes per batch of the memory side")
    memory.add_argument("--memory-size", type=int, default=4096, help="memory rows M of the memory side")
    memory.add_argument("--large-n", type=int, default=1000, help="classes per batch of the side without memory")
    memory.add_argument("--loss", default="multi_similarity", help="the loss of both sides (one that takes memory)")
    memory.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    memory.set_defaults(run=run_memory_step)

    data = _suite(suites, "data", "loader samples/s against plain decoding of the same images")
    data.add_argument("--images", help="image folder or .zip (default: the Omniglot zip if given, else procedural)")
    data.add_argument("--omniglot", help=OMNIGLOT_HELP)
    data.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers (0 = in-process)")
    data.set_defaults(run=run_data)

    reproduce = _suite(suites, "reproduce", "the papers' loss comparisons at small scale (results.md and plots)")
    reproduce.add_argument("--quick", action="store_true", help="the tiny scale, not the full one")
    reproduce.add_argument("--only", help="comma-separated groups (losses,n,omniglot); default all")
    reproduce.add_argument("--out", default="docs/results", help="where results.md and the plots go")
    reproduce.add_argument("--steps", type=int, help="steps of every run (default: the scale's)")
    reproduce.add_argument("--n", type=int, help="N of the procedural loss comparison (default 128)")
    reproduce.add_argument("--n-sweep", help="the N of the sweep, comma-separated (default 64,...,1000)")
    reproduce.add_argument("--omniglot", help=OMNIGLOT_HELP + "; needed by the omniglot group")
    reproduce.set_defaults(run=run_reproduce)

    peers = _suite(suites, "peers", "pytorch-metric-learning in a plain loop against dml-dist, same images")
    peers.add_argument("--config", default="omniglot", help="the dml-dist config every row follows")
    peers.add_argument(
        "--data",
        help="omniglot (alphabet split), procedural, or a training shard directory (with --eval-data); "
        "default omniglot when its zip is given, else procedural",
    )
    peers.add_argument("--eval-data", help="held-out shard directory")
    peers.add_argument("--omniglot", help=OMNIGLOT_HELP)
    peers.add_argument("--quick", action="store_true", help="the tiny scale (a few steps, N = 16), not the full one")
    peers.add_argument("--steps", type=int, help="steps of every run (default: the config's)")
    peers.add_argument("--n", type=int, help="N classes per batch (batch.num_classes)")
    peers.add_argument(
        "--peer-steps", help="comma-separated step budgets of the PML rows, a row each (default: --steps)"
    )
    peers.add_argument("--seeds", default="0", help="comma-separated seeds (mean and spread over them)")
    peers.add_argument("--peer-lr", type=float, default=1e-3, help="Adam learning rate of the PML rows")
    peers.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    peers.add_argument("--backbones", default="config,conv4_bn", help="backbones of the PML rows (config, conv4_bn)")
    peers.add_argument(
        "--peer-losses", default="ms,npair,triplet", help="PML recipes of the peer rows (ms, npair, triplet)"
    )
    peers.add_argument("--runs", help="where the dml-dist run directories go (default runs/bench-peers)")
    peers.set_defaults(run=run_peers)

    gpu = _suite(suites, "gpu", "the worker's GPU path in minutes: NCCL, the step against a plain loop, MFU, faiss")
    gpu.add_argument("--minutes", type=float, default=4.0, help="the whole check ends within this time")
    gpu.set_defaults(func=cmd_bench_gpu)


def _suite(suites: Commands, name: str, help: str) -> argparse.ArgumentParser:
    parser = suites.add(name, help)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    report = args.run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    """The GPU check writes its report itself, after every section (``bench/gpu/report.py``);
    exit status 1 when a check failed."""
    from dml_dist.bench.gpu.suite import run_gpu_check

    if args.minutes <= 0:
        raise ValueError(f"--minutes: expected a positive number, got {args.minutes}")
    return 0 if run_gpu_check(args.json, args.minutes)["ok"] else 1


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def run_losses(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.losses import run_loss_bench

    return run_loss_bench(_ints(args.sizes), args.repeats, _ints(args.memory_sizes))


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.scaling import run_scaling_bench

    return run_scaling_bench(chunk_size=args.chunk_size)


def run_mining(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.mining import run_mining_bench

    return run_mining_bench(num_classes=args.classes)


def run_memory_step(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.memory_step import run_memory_step_bench

    return run_memory_step_bench(
        args.config, args.steps, args.rounds, args.small_n, args.memory_size, args.large_n, args.set, args.loss
    )


def run_mining_step(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.mining_step import run_mining_step_bench

    return run_mining_step_bench(args.config, args.steps, args.rounds, args.ramp, args.set)


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.data import run_data_bench

    return run_data_bench(args.images, num_workers=args.loader_workers, omniglot=args.omniglot)


def run_reproduce(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.reproduce.suite import run_reproduction

    return run_reproduction(
        args.out,
        quick=args.quick,
        only=args.only,
        steps=args.steps,
        n=args.n,
        n_sweep=args.n_sweep,
        omniglot=args.omniglot,
    )


def run_peers(args: argparse.Namespace) -> dict[str, Any]:
    from dml_dist.bench.peers.suite import run_peers_bench

    return run_peers_bench(
        args.config,
        args.set,
        data=args.data,
        eval_data=args.eval_data,
        steps=args.steps,
        n=args.n,
        seeds=_ints(args.seeds),
        quick=args.quick,
        peer_lr=args.peer_lr,
        runs=Path(args.runs) if args.runs else None,
        backbones=tuple(args.backbones.split(",")),
        omniglot=args.omniglot,
        peer_steps=_ints(args.peer_steps) if args.peer_steps else None,
        peer_losses=tuple(args.peer_losses.split(",")),
    )
