"""The driver side of ``dml-dist train``: data, run directory, Ray, mining actor, TorchTrainer.

The driver resolves the data (writing the procedural set once, into the storage when there is
one), checks the batch against the data set, writes ``config.yaml``, starts or joins Ray
(``--address``, else ``RAY_ADDRESS``, else a local instance), checks that every node sees the
run directory and the shards (``storage.py``), starts the job's mining actor and runs Ray
Train's ``TorchTrainer`` with one worker per CPU slot (gloo) or per GPU (NCCL). Ray Train's
storage is the run directory, so checkpoints land in ``RUN_DIR/checkpoints``; the final
figures come back in the trainer's ``Result``, not from a file on the driver's disk.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from dml_dist.atomic import write_json_atomic
from dml_dist.config.loader import save_config
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.datasets import resolve_data
from dml_dist.data.shard_layout import CLASS_INDEX, is_complete, read_manifest
from dml_dist.data.tar_stream import is_remote
from dml_dist.losses import build_loss
from dml_dist.mining.actor import BANK_FILE, start_mining_actor
from dml_dist.models.embedder import check_pretrained_weights
from dml_dist.observability.logging import library_level, worker_env
from dml_dist.train import checkpoint, run_files, uri_storage
from dml_dist.train.errors import TrainingStopped
from dml_dist.train.loop import NONFINITE_MARK, WorkerPlan, train_loop_per_worker
from dml_dist.train.storage import SharedPath, check_nodes_see


def check_batch_fits(config: ExperimentConfig, num_train_classes: int) -> None:
    n = config.batch.num_classes
    if n > num_train_classes:
        raise ValueError(
            f"batch.num_classes: N={n} is larger than the {num_train_classes} training classes of the data set"
        )


REPORT_POLL_SECONDS = "0.2"


def init_ray(address: str | None, cpus: int) -> None:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``), or start a local Ray instance with
    room for the workers."""
    import ray

    # Ray Train V2 tees worker prints into its logger, which shows every line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # RAY_ADDRESS in the job's environment lets Ray Train's helper actors find this cluster
        # when other Ray instances run on the same machine.
        env = {**worker_env(), "RAY_ADDRESS": address}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env})
    else:
        # The dashboard (on 127.0.0.1) also serves the State API that Ray Train polls.
        ray.init(
            address="local",
            num_cpus=max(cpus, 2),
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": worker_env()},
        )


def run_training(
    config: ExperimentConfig,
    run_dir: Path | str,
    address: str | None = None,
    resume: bool = False,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train as configured; returns the final figures (held-out Recall@K now and untrained,
    placement of the workers, mean samples/s, train time) from the trainer's ``Result``.

    ``resume`` continues the run in ``run_dir`` from its latest intact checkpoint; without it a
    run directory that already holds checkpoints is refused, so nothing written is overwritten.
    ``callbacks`` are Ray Train callbacks (``dml-dist tune`` passes Ray Tune's report callback).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    build_loss(config.loss.name, **config.loss.params)  # unknown loss or parameter: fail here, not in a worker
    paths = resolve_data(config.data)
    num_train_classes = _usable_classes(config, paths.train)
    check_batch_fits(config, num_train_classes)
    check_pretrained_weights(config.model)  # before Ray starts: one clear line, not a worker traceback
    remote = uri_storage.is_uri(str(run_dir))
    run_uri = str(run_dir)
    # With a URI run directory the driver writes its files into a local mirror and uploads them.
    mirror = uri_storage.RunMirror(run_uri, fresh=True, kind="driver") if remote else None
    run_dir = mirror.local if mirror is not None else Path(run_dir).resolve()
    _check_resume(run_uri if remote else run_dir / run_files.CHECKPOINTS, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (run_dir / run_files.METRICS).unlink(missing_ok=True)
    save_config(config, run_dir / run_files.CONFIG)
    init_ray(address, int(config.train.workers * _worker_resources(config)["CPU"]))
    train_shards, eval_shards = str(paths.train), str(paths.eval)
    if remote:
        # Shards the driver holds go to the storage; each node copies them into its own scratch.
        storage = config.train.storage if config.train.storage and uri_storage.is_uri(config.train.storage) else run_uri
        if isinstance(paths.train, Path):
            train_shards = uri_storage.publish_shards(paths.train, storage)
        eval_shards = uri_storage.publish_shards(paths.eval, storage)
        mirror.push([run_files.CONFIG])  # type: ignore[union-attr]
    check_nodes_see(_shared_paths(run_uri if remote else str(run_dir), train_shards, eval_shards, paths.train))
    job_name = f"{Path(run_uri.split('?')[0]).name}-{uuid.uuid4().hex[:8]}"
    actor = None
    if config.mining.enabled:
        # A fresh run starts with an empty bank; the file is what a restarted actor restores
        # (node-local scratch with a URI storage: the checkpoints carry the state across nodes).
        if not resume:
            (run_dir / BANK_FILE).unlink(missing_ok=True)
        actor = start_mining_actor(
            job_name,
            num_train_classes,
            config.model.embedding_dim,
            config.mining,
            config.train.seed,
            checkpoint_path=str(run_dir / BANK_FILE),
        )
    plan = WorkerPlan(
        config=config,
        train_shards=train_shards,
        eval_shards=eval_shards,
        run_dir=run_uri if remote else str(run_dir),
        job_name=job_name,
        mining_actor=actor,
        resume=resume,
    )
    # A ray.train.report returns only when Ray Train's controller next polls the workers, every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): each report would cost up to 2 s of
    # training. The controller reads it from the driver's environment when the trainer below is built.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_SECONDS)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.__dict__,
        scaling_config=ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker=_worker_resources(config),
            placement_strategy=config.train.placement,
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # Ray Train V2 takes logging_config; mypy reads V1
            name=run_files.CHECKPOINTS,  # Ray Train's run directory: RUN_DIR/checkpoints/step-NNNNNN
            storage_path=run_uri if remote else str(run_dir),
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints or None),
            logging_config=LoggingConfig(log_level=library_level()),
            callbacks=callbacks or [],
        ),
    )
    print(
        f"train: {config.train.workers} workers, global batch {config.batch.num_classes} classes x "
        f"{config.batch.images_per_class} images, {config.train.steps} steps, run dir {run_uri}",
        flush=True,
    )
    started = time.perf_counter()
    try:
        fitted = trainer.fit()
    except Exception as err:
        _finish_mining(actor)
        if NONFINITE_MARK in str(err):
            reason = str(err)[str(err).index(NONFINITE_MARK) :].splitlines()[0]
            raise TrainingStopped(reason) from err
        raise
    mining_stats = _finish_mining(actor)
    result: dict[str, Any] = dict(fitted.metrics or {})
    result["samples_per_second"] = result.get("mean_samples_per_second")
    if mining_stats:
        result["mining"] = mining_stats
        write_json_atomic(run_dir / "mining.json", mining_stats)
    if mirror is not None and mining_stats:
        mirror.push(["mining.json"])
    result["train_seconds"] = time.perf_counter() - started
    return result


def _check_resume(checkpoints: Path | str, resume: bool) -> None:
    """Refuse a fresh run over existing checkpoints, and a resume without any (local or URI run)."""
    if isinstance(checkpoints, str):
        tags = uri_storage.list_dirs(uri_storage.join(checkpoints, run_files.CHECKPOINTS))
        found, where = any(t.startswith(checkpoint.PREFIX) for t in tags), checkpoints
    else:
        found, where = checkpoint.has_checkpoints(checkpoints), str(checkpoints.parent)
    if not resume and found:
        raise ValueError(
            f"--run-dir {where} already holds checkpoints: pass --resume to continue that run, "
            "or choose another --run-dir"
        )
    if resume and (not found if isinstance(checkpoints, str) else checkpoint.latest_good(checkpoints) is None):
        raise ValueError(f"--resume: {where} holds no complete checkpoint to resume from")


def _shared_paths(run_dir: str, train: str, evaluation: str, driver_train: Path | str) -> list[SharedPath]:
    """What every node must see: the run directory (read and write) and the shard directories."""
    paths = [SharedPath("--run-dir", run_dir, writable=True)]
    join = uri_storage.join if uri_storage.is_uri(run_dir) else (lambda a, b: str(Path(a) / b))
    if isinstance(driver_train, Path):
        paths.append(SharedPath("data.train_shards", join(train, "manifest.json"), writable=False))
    paths.append(SharedPath("data.eval_shards", join(evaluation, "manifest.json"), writable=False))
    return paths


def _usable_classes(config: ExperimentConfig, train_shards: Path | str) -> int:
    """Training classes the workers' loaders will use (``exclude`` drops classes with < K images),
    counted from the shard set's class index (indexed) or manifest (streaming).

    A remote stream does not say how many classes it holds: N is taken as fitting, and the
    streaming loader stops with a clear error if the stream runs out of classes.
    """
    data, k = config.data, config.batch.images_per_class
    if data.mode == "streaming":
        if not is_remote(str(train_shards)) and is_complete(train_shards):
            return int(read_manifest(train_shards)["num_classes"]) or config.batch.num_classes
        return config.batch.num_classes
    if is_remote(str(train_shards)) or not Path(train_shards).is_dir():
        raise ValueError(f"data.train_shards: indexed mode needs a local shard directory, got {train_shards}")
    sizes = _class_sizes(Path(train_shards))
    usable = [size for size in sizes if size >= k] if data.min_images_policy == "exclude" else sizes
    if not usable:
        raise ValueError(f"data: no class of {train_shards} has K={k} images")
    return len(usable)


def _class_sizes(directory: Path) -> list[int]:
    """Images per class of a shard directory, read from its class index (``class_index.json``)."""
    index = json.loads((directory / CLASS_INDEX).read_text())
    return [len(entries) for entries in index["classes"].values()]


def _finish_mining(actor: Any) -> dict[str, Any] | None:
    """Save the final bank, collect the service's stats, stop the actor (None when mining is off)."""
    if actor is None:
        return None
    import ray

    stats: dict[str, Any] | None = None
    try:
        ray.get(actor.save.remote(), timeout=60)
        stats = ray.get(actor.stats.remote(), timeout=10)
    except Exception as err:  # a dead or stuck service must not fail a finished training
        print(f"train: the mining service did not report at the end ({err})", flush=True)
    ray.kill(actor)
    return stats


def _worker_resources(config: ExperimentConfig) -> dict[str, float]:
    """One CPU for the training process plus one per DataLoader worker (and a GPU on GPU runs)."""
    cpus = 1.0 + config.data.loader_workers
    return {"GPU": 1.0, "CPU": cpus} if config.train.use_gpu else {"CPU": cpus}
