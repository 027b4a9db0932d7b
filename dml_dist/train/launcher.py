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

import os
import time
import uuid
from pathlib import Path
from typing import Any

from dml_dist import run_files, storage
from dml_dist.atomic import write_json_atomic
from dml_dist.config.loader import save_config
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.datasets import DataPaths, resolve_data
from dml_dist.data.loader import training_class_count
from dml_dist.data.shard_layout import MANIFEST
from dml_dist.losses import build_loss
from dml_dist.mining.actor import BANK_FILE, start_mining_actor
from dml_dist.models.input_config import resolve_input
from dml_dist.observability.logging import library_level, worker_env
from dml_dist.train import node_copies, run_directory, run_lease
from dml_dist.train.errors import TrainingStopped
from dml_dist.train.loop import train_loop_per_worker
from dml_dist.train.model_sources import check_weights
from dml_dist.train.preflight import Demand, check_resources, connect_ray
from dml_dist.train.run_result import RunResult
from dml_dist.train.storage import SharedPath, anchor_relative_paths, check_nodes_see
from dml_dist.train.worker_plan import WorkerPlan


def check_batch_fits(config: ExperimentConfig, num_train_classes: int) -> None:
    n = config.batch.num_classes
    if n > num_train_classes:
        raise ValueError(
            f"batch.num_classes: N={n} is larger than the {num_train_classes} training classes of the data set"
        )


REPORT_POLL_SECONDS = "0.2"


def init_ray(address: str | None, cpus: int, run: str | None = None) -> None:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``), or start a local Ray instance with
    room for the workers. ``run``: the run's name, put in the Ray job's metadata.

    A joined cluster gets this client's token when one exists (``distributed/ray_auth.py``), and a
    refused token is one line, not a traceback (``preflight.connect_ray``)."""
    import ray

    from dml_dist.distributed.ray_auth import enable_token_auth

    # Ray Train V2 tees worker prints into its logger, which shows every line twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    job_config = ray.job_config.JobConfig(metadata={run_files.RUN_METADATA_KEY: run} if run else None)
    if address:
        # RAY_ADDRESS in the job's environment lets Ray Train's helper actors find this cluster
        # when other Ray instances run on the same machine.
        env = {**worker_env(), "RAY_ADDRESS": address}
        enable_token_auth()
        connect_ray(address, log_to_driver=True, runtime_env={"env_vars": env}, job_config=job_config)
    else:
        # The dashboard (on 127.0.0.1) also serves the State API that Ray Train polls.
        ray.init(
            address="local",
            num_cpus=max(cpus, 2),
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": worker_env()},
            job_config=job_config,
        )


def run_training(
    config: ExperimentConfig,
    run_dir: Path | str,
    address: str | None = None,
    resume: bool | str = False,
    callbacks: list[Any] | None = None,
    allow_changes: list[str] | None = None,
) -> RunResult:
    """Train as configured; returns the final figures (held-out Recall@K now and untrained,
    placement of the workers, mean samples/s, train time) from the trainer's ``Result``.

    The run holds ``run_dir``'s lease while it lives (``run_lease.py``): a second run into it is
    refused. ``resume`` (True, or ``"auto"``: when a checkpoint exists) continues the run in
    ``run_dir`` from its latest intact checkpoint, refusing config changes that
    ``allow_changes`` does not name; a fresh run needs a new or empty ``run_dir``
    (``run_directory.py``), so nothing another run wrote is overwritten.
    ``callbacks`` are Ray Train callbacks (``dml-dist tune`` passes Ray Tune's report callback).
    """
    build_loss(config.loss.name, **config.loss.params)  # unknown loss or parameter: fail here, not in a worker
    config = resolve_input(config)  # a timm backbone's input size, mean, std, filter: into config.yaml
    paths = resolve_data(config.data)
    num_train_classes = _usable_classes(config, paths.train)
    check_batch_fits(config, num_train_classes)
    check_weights(config)  # before Ray starts: one clear line, not a worker traceback
    config = anchor_relative_paths(config)  # after the checks (errors name the paths as given): workers run elsewhere
    run_uri = str(run_dir)
    # The run directory is claimed first, before Ray starts: a second run into it fails at once.
    lease = run_lease.Lease(storage.absolute(run_dir))
    lease.acquire()
    try:
        resume = run_directory.claim(lease.run_dir, config, resume, allow_changes)
        return _train_holding_lease(config, paths, num_train_classes, run_uri, address, resume, callbacks, lease)
    finally:
        lease.release()


def _train_holding_lease(
    config: ExperimentConfig,
    paths: DataPaths,
    num_train_classes: int,
    run_uri: str,
    address: str | None,
    resume: bool,
    callbacks: list[Any] | None,
    lease: run_lease.Lease,
) -> RunResult:
    """``run_training`` once this run holds the run directory ``run_uri`` (a path or a URI)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    job_name = run_files.run_name(run_uri)  # the run's one name: Ray Train, Prometheus, the train: line, the Ray job
    init_ray(address, int(config.train.workers * _worker_resources(config)["CPU"]), job_name)
    lease.set_ray_job(_ray_job_id())
    check_resources(
        Demand(config.train.workers, _worker_resources(config), strict_spread=config.train.placement == "STRICT_SPREAD")
    )  # before the run's files: a cluster that can never hold the workers fails now, not after a wait
    # With a URI run directory the driver writes its files into a local mirror and uploads them.
    mirror = node_copies.RunMirror.of(run_uri, fresh=True, kind="driver")
    run_dir = mirror.local if mirror is not None else Path(run_uri).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh run; with --resume auto, over an earlier attempt that saved no checkpoint
        (run_dir / run_files.METRICS).unlink(missing_ok=True)
    save_config(config, run_dir / run_files.CONFIG)
    train_shards, eval_shards = str(paths.train), str(paths.eval)
    if mirror is not None:
        # Shards the driver holds go to the storage; each node copies them into its own scratch.
        target = (
            config.train.storage if config.train.storage and not storage.is_local(config.train.storage) else run_uri
        )
        if paths.train_directory is not None:
            train_shards = node_copies.publish_shards(paths.train_directory, target)
        eval_shards = node_copies.publish_shards(paths.eval, target)
        mirror.push([run_files.CONFIG])
    shared = run_uri if mirror is not None else str(run_dir)  # the run directory as every node names it
    check_nodes_see(_shared_paths(shared, train_shards, eval_shards, paths.train_directory is not None))
    actor = None
    if config.mining.enabled:
        # A fresh run starts with an empty bank; the file is what a restarted actor restores
        # (node-local scratch with a URI storage: the checkpoints carry the state across nodes).
        if not resume:
            (run_dir / BANK_FILE).unlink(missing_ok=True)
        actor = start_mining_actor(
            f"{job_name}-{uuid.uuid4().hex[:8]}",  # actor names are unique on the cluster; run names need not be
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
        run_dir=shared,
        job_name=job_name,
        mining_actor=actor,
        resume=resume,
    )
    # A ray.train.report returns only when Ray Train's controller next polls the workers, every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): each report would cost up to 2 s of
    # training. The controller reads it from the driver's environment when the trainer below is built.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_SECONDS)
    # The Ray dashboard's Train view lists a run only with state tracking on (read when the trainer is built).
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    ray_parent, ray_name = _ray_train_location(shared)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=plan.__dict__,
        # The process group's timeout: a rank hung in a collective fails the step (and Ray Train
        # restarts the workers) after this long, not after Ray's default 1,800 s.
        torch_config=TorchConfig(timeout_s=int(config.train.collective_timeout_s)),
        scaling_config=ScalingConfig(
            num_workers=config.train.workers,
            use_gpu=config.train.use_gpu,
            resources_per_worker=_worker_resources(config),
            placement_strategy=config.train.placement,
        ),
        run_config=RunConfig(  # type: ignore[call-arg]  # Ray Train V2 takes logging_config; mypy reads V1
            # Ray Train's run directory is RUN_DIR itself, named as the run; checkpoints go to
            # RUN_DIR/checkpoints/step-NNNNNN (checkpointer.Checkpointer.report names them).
            name=ray_name,
            storage_path=ray_parent,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints or None),
            logging_config=LoggingConfig(log_level=library_level()),
            callbacks=callbacks or [],
        ),
    )
    print(
        f"train: run {job_name}: {config.train.workers} workers, global batch {config.batch.num_classes} classes x "
        f"{config.batch.images_per_class} images, {config.train.steps} steps, run dir {run_uri}\n"
        f"train: {paths.describe()}",
        flush=True,
    )
    started = time.perf_counter()
    try:
        fitted = trainer.fit()
    except Exception:
        _finish_mining(actor)
        raise
    mining_stats = _finish_mining(actor)
    result = RunResult.from_report(dict(fitted.metrics or {}), run_uri, time.perf_counter() - started, mining_stats)
    if result.stop_reason is not None:  # the workers ended the run early, on purpose (train/errors.py)
        raise TrainingStopped(result.stop_reason)
    if mining_stats:
        write_json_atomic(run_dir / "mining.json", mining_stats)
    if mirror is not None and mining_stats:
        mirror.push(["mining.json"])
    return result


def _ray_train_location(run_dir: str) -> tuple[str, str]:
    """(storage_path, name) of ``RunConfig`` such that Ray Train's run directory is ``run_dir``:
    its parent, and its last component (``run_files.run_name``). A URI keeps its query."""
    path, _, query = run_dir.partition("?")
    parent = path.rstrip("/").rsplit("/", 1)[0]
    return parent + (f"?{query}" if query else ""), run_files.run_name(run_dir)


def _shared_paths(run_dir: str, train: str, evaluation: str, train_is_directory: bool) -> list[SharedPath]:
    """What every node must see: the run directory (read and write) and the shard directories."""
    paths = [SharedPath("--run-dir", run_dir, writable=True)]
    if train_is_directory:
        paths.append(SharedPath("data.train_shards", str(storage.join(train, MANIFEST)), writable=False))
    paths.append(SharedPath("data.eval_shards", str(storage.join(evaluation, MANIFEST)), writable=False))
    return paths


def _usable_classes(config: ExperimentConfig, train_shards: Path | str) -> int:
    """Training classes the workers' loaders will use (``data/loader.py::training_class_count``);
    a stream that does not say how many it holds counts as N (its loader stops with a clear
    error if it runs out of classes)."""
    count = training_class_count(config.data, str(train_shards), config.batch.images_per_class)
    return count or config.batch.num_classes


def _ray_job_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_job_id())


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
