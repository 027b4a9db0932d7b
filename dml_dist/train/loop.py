"""The per-worker training loop that Ray Train runs on every rank.

One step (``../shared/DESIGN.md``): rank 0 takes the step's N classes from the mining service
(or random ones) and broadcasts them; every rank reads its N/W classes x K images from the
shards by index, embeds them, all-gathers the embeddings with gradient, computes its anchors'
share of the loss against the global batch, and steps the DeepSpeed engine (the gradient rule
is in ``dist/collectives.py``). Rank 0 then publishes the batch's class embeddings to the
mining service, logs, and evaluates every ``eval_every`` steps.

Every ``log_every`` steps (and at checkpoint steps) all ranks call ``ray.train.report``: the
metrics (loss, samples/s, the last held-out Recall@K) reach the Ray dashboard's Train view and
the driver's ``Result``, and at checkpoint steps each rank's share of the checkpoint goes to the
run's storage through Ray Train (``checkpoint.py``). ``report`` is a barrier, so every rank
calls it at the same steps. The run's files (``metrics.jsonl``, ``eval.json``, ``embedder.pt``,
``curves.png``, ``gallery.png``) are written by rank 0 into the run directory, which is on the
storage every node mounts; scratch for a checkpoint is a node-local temporary directory.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dml_dist.atomic import write_json_atomic
from dml_dist.config.loader import config_to_dict
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.loader import build_loader
from dml_dist.distributed import collectives
from dml_dist.eval.gallery import write_run_gallery
from dml_dist.eval.heldout import evaluate_shards
from dml_dist.eval.result import EvalPoint, EvalResult
from dml_dist.eval.retrieval import format_recall_table
from dml_dist.losses import build_loss
from dml_dist.losses.memory import LossWithMemory, build_memory
from dml_dist.mining.client import MiningClient, RandomClasses
from dml_dist.mining.refresh import refresh_stale_classes
from dml_dist.mining.selection import violation_rate
from dml_dist.models import build_model
from dml_dist.models.embedder import EmbedderWithLoss
from dml_dist.observability.logging import quiet_libraries
from dml_dist.observability.metrics import NullMetrics, RayMetrics
from dml_dist.observability.plots import write_training_curves
from dml_dist.observability.progress import format_step_line
from dml_dist.train import checkpoint, run_files, uri_storage
from dml_dist.train.engine import build_engine, engine_dtype
from dml_dist.train.step import optimizer_step
from dml_dist.train.storage import node_info

NONFINITE_MARK = "non-finite loss:"


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


@dataclass
class WorkerPlan:
    """What the driver hands every worker (Ray pickles it): the validated config, the data and
    run paths, and the mining actor handle."""

    config: ExperimentConfig
    train_shards: str
    eval_shards: str
    run_dir: str
    job_name: str
    mining_actor: Any = None
    resume: bool = False


def train_loop_per_worker(plan_dict: dict[str, Any]) -> None:
    """Ray Train entry point: build everything from the plan, then train."""
    quiet_libraries()  # this worker's library loggers and known warnings (observability/logging.py)
    Trainer(localize_shards(WorkerPlan(**plan_dict))).run()


def localize_shards(plan: WorkerPlan) -> WorkerPlan:
    """With a URI run directory, shard directories in the storage are read from node-local copies."""
    if not uri_storage.is_uri(plan.run_dir):
        return plan
    train, evaluation = plan.train_shards, plan.eval_shards
    if uri_storage.is_uri(train) and uri_storage.exists(uri_storage.join(train, uri_storage.MANIFEST)):
        train = str(uri_storage.localize_shards(train))
    return dataclasses.replace(plan, train_shards=train, eval_shards=str(uri_storage.localize_shards(evaluation)))


class Trainer:
    """State of one worker: engine, loss, data, class source, sinks."""

    def __init__(self, plan: WorkerPlan):
        self.config = config = plan.config
        self.plan = plan
        # A URI run directory: rank 0 writes into a node-local mirror that report() uploads.
        self.mirror = uri_storage.RunMirror(plan.run_dir, fresh=True) if uri_storage.is_uri(plan.run_dir) else None
        self.run_dir = self.mirror.local if self.mirror is not None else Path(plan.run_dir)
        self.rank = collectives.rank()
        self.world_size = collectives.world_size()
        use_gpu = config.train.use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
        self.dtype = engine_dtype(config.engine, use_gpu)
        if not use_gpu:
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        torch.manual_seed(config.train.seed)
        self.loader = build_loader(
            config.data,
            plan.train_shards,
            seed=config.train.seed,
            images_per_class=config.batch.images_per_class,
            world_size=self.world_size,
            rank=self.rank,
            num_classes=config.batch.num_classes,
        )
        self.skips_reported = 0
        self.local_batch = config.batch.num_classes // self.world_size * config.batch.images_per_class
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        engine_config = dataclasses.replace(config.engine, lr=config.engine.scaled_lr(config.batch.num_classes))
        trained = EmbedderWithLoss(build_model(config.model), build_loss(config.loss.name, **config.loss.params))
        self.engine = build_engine(
            trained, engine_config, self.local_batch, use_gpu, local_rank, total_steps=config.train.steps
        )
        self.embedder = self.engine.module.embedder
        self.loss_fn = self.engine.module.loss
        # Cross-batch memory (losses/memory.py): outside the engine's module, the same on every rank.
        self.memory = build_memory(config.memory, config.model.embedding_dim, self.device)
        self.classes = self._class_source()
        self.metrics = self._metrics_sink()
        self.eval_history: list[EvalPoint] = []
        self.last_eval: dict[str, Any] = {}
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.samples_done = 0
        self.seconds_done = 0.0
        self.start_step = self._resume()  # first: a resume on a URI storage pulls the run's files
        self.placement = self._announce_placement()

    def _announce_placement(self) -> list[dict[str, Any]]:
        """Every rank's node, host and pid, in rank order (printed by each rank, reported by rank 0)."""
        here = {"rank": self.rank, **node_info()}
        print(f"[rank {self.rank}] node {here['node_id'][:12]} host {here['host']} pid {here['pid']}", flush=True)
        placement = collectives.all_gather_object(here)
        if self.rank == 0:
            write_json_atomic(self.run_dir / run_files.PLACEMENT, placement)
        return placement

    def _resume(self) -> int:
        """Restore the checkpoint Ray Train hands back, if any; returns its step.

        ``ray.train.get_checkpoint()`` names the latest reported checkpoint after Ray Train
        restarts a failed worker group, and after ``dml-dist train --resume`` (same run directory,
        so the same Ray Train storage and run name). If that checkpoint does not verify, the
        newest intact one beside it is used. The mining service gets the bank of the same step.
        """
        import ray.train

        reported = ray.train.get_checkpoint()
        # A fresh run's directory holds no checkpoint (the driver refuses one that does), so a
        # sealed checkpoint here is this run's, also one whose report a failure cut short.
        checkpoints, good = self._latest_good_checkpoint(reported)
        if good is None:
            if self.plan.resume or reported is not None:
                raise RuntimeError(f"no intact checkpoint to resume from in {checkpoints}")
            return 0
        state = checkpoint.load(self.engine, checkpoints, good)
        step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.memory.load_state_dict(state.get("memory", {}))
        mining_file = checkpoints / good.tag / checkpoint.MINING_STATE
        if self.rank == 0 and mining_file.is_file():
            self.classes.restore_state(str(mining_file))
        if self.rank == 0:
            print(f"resuming from {checkpoints / good.tag} at step {step}", flush=True)
            if self.mirror is not None:
                self.mirror.pull()
            run_files.append_jsonl(self.run_dir / "resumes.jsonl", {"resumed_from": step, "time": time.time()})
            run_files.truncate_metrics(self.run_dir / run_files.METRICS, after_step=step)
            eval_file = self.run_dir / run_files.EVAL
            if eval_file.is_file():
                history = EvalResult.read(eval_file).history
                self.eval_history = [h for h in history if h.step <= step]
        return step

    def _latest_good_checkpoint(self, reported: Any) -> tuple[Path, checkpoint.GoodCheckpoint | None]:
        """The directory holding the newest intact checkpoint, and that checkpoint (or None).

        On a URI storage the checkpoints are copied into node-local scratch, newest first.
        """
        if self.mirror is None:
            local = Path(reported.path).parent if reported is not None else self.run_dir / run_files.CHECKPOINTS
            return local, checkpoint.latest_good(local)
        if reported is not None:
            fs, parent = reported.filesystem, reported.path.rstrip("/").rsplit("/", 1)[0]
        else:
            fs, parent = uri_storage.filesystem(uri_storage.join(self.plan.run_dir, run_files.CHECKPOINTS))
        found = uri_storage.fetch_latest_good(fs, parent)
        return found if found is not None else (Path(parent), None)

    def _class_source(self) -> RandomClasses:
        args = (self.config.train.seed, self.loader.num_classes, self.config.batch.num_classes)
        if self.rank == 0 and self.plan.mining_actor is not None:
            return MiningClient(self.plan.mining_actor, self.config.mining.timeout_s, *args)
        return RandomClasses(*args)

    def _metrics_sink(self) -> NullMetrics:
        if not self.config.metrics.enabled:
            return NullMetrics()
        return RayMetrics(self.plan.job_name, self.rank)

    def run(self) -> None:
        train = self.config.train
        steps = train.steps
        if self.rank == 0 and not self.eval_history:
            self.evaluate(step=0)
        self.classes.request(self.start_step)
        run_started = time.perf_counter()
        for step in range(self.start_step, steps):
            row = self.train_step(step)
            self._count_nonfinite(step, row)
            done = step + 1
            last = done == steps
            should_log = _due(done, train.log_every) or last
            should_checkpoint = _due(done, train.checkpoint_every) or last
            if self.rank == 0 and should_log:
                run_files.append_jsonl(self.run_dir / run_files.METRICS, row)
                mined = row["mined"] if self.config.mining.enabled else None
                elapsed = time.perf_counter() - run_started
                line = format_step_line(
                    done, steps, row["loss"], row["samples_per_second"], row["step_seconds"], elapsed, mined,
                    start_step=self.start_step,
                )  # fmt: skip
                print(line, flush=True)
            if self.rank == 0 and (_due(done, train.eval_every) or last):
                self.evaluate(step=done)
            if self.rank == 0 and last:
                self._write_final_files()
            if should_log or should_checkpoint:
                self.report(done, row, with_checkpoint=should_checkpoint)

    def _write_final_files(self) -> None:
        """Weights for ``eval``/``embed`` and the curves, beside the run's other files (rank 0)."""
        steps = self.config.train.steps
        run_files.save_embedder(self.run_dir / run_files.EMBEDDER, self.embedder, config_to_dict(self.config), steps)
        write_training_curves(self.run_dir)

    def _count_nonfinite(self, step: int, row: dict[str, Any]) -> None:
        """Skipped steps are counted; too many in a row stop the job with the step and loss."""
        if not row["skipped"]:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        print(f"step {step + 1}: loss {row['loss']} or a gradient is not finite; step skipped", flush=True)
        if self.nonfinite_in_a_row >= self.config.train.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{NONFINITE_MARK} step {step + 1} had loss {row['loss']}, the {self.nonfinite_in_a_row}th step in a "
                f"row with a non-finite loss or gradient (train.max_nonfinite_steps="
                f"{self.config.train.max_nonfinite_steps}); lower engine.lr or enable engine.gradient_clipping"
            )

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step on the global batch; returns the row logged to metrics.jsonl."""
        started = time.perf_counter()
        answer = collectives.broadcast_object(self.classes.classes_for(step) if self.rank == 0 else None)
        self.classes.request(step + 1)  # selected by the service while this step trains
        self.metrics.observe_mining(answer)
        images, labels = self.load_share(step, answer["classes"])
        data_seconds = time.perf_counter() - started
        labels_B = labels.to(self.device)
        result = optimizer_step(
            self.engine,
            LossWithMemory(self.loss_fn, self.memory, step),
            images.to(self.device, self.dtype, non_blocking=True),
            labels_B,
            self.config.batch.chunk_size,
        )
        loss, ref_ND = result.loss, result.ref_ND
        self.skipped_steps += int(result.skipped)
        labels_N = collectives.gather_no_grad(labels_B)
        if not result.skipped:  # the same decision on every rank, so the memories stay identical
            self.memory.enqueue(ref_ND, labels_N, step)
        # How hard the batch is for the model (mining/selection.py): one N x N product, rank 0.
        violation = violation_rate(ref_ND, labels_N) if self.rank == 0 else None
        self.metrics.observe_violation(violation)
        memory_stats = self.memory.stats(step + 1)
        self.metrics.observe_memory(memory_stats)
        if self.rank == 0 and not result.skipped:
            self.classes.publish(step, np.asarray(answer["classes"]), self._class_embeddings(ref_ND))
        stale = answer.get("stale_classes", [])  # every refresh_every steps: re-embed stale classes
        refresh_stale_classes(
            self.embedder, self.loader, self.classes, step, stale, self.config, self.device, self.dtype
        )
        step_seconds = time.perf_counter() - started
        global_samples = ref_ND.shape[0]
        self.samples_done += global_samples
        self.seconds_done += step_seconds
        self.metrics.observe_step(loss, images.shape[0], step_seconds, {"data": data_seconds, **result.seconds})
        return {
            "step": step + 1,
            "loss": loss,
            "samples_per_second": global_samples / step_seconds,
            "global_batch": global_samples,
            "skipped": result.skipped,
            "skipped_steps": self.skipped_steps,
            "step_seconds": step_seconds,
            "data_seconds": data_seconds,
            **{f"{name}_seconds": value for name, value in result.seconds.items()},
            "mined": bool(answer.get("mined", False)),
            "fallbacks": self.classes.fallbacks,
            "refresh_age_max": answer.get("refresh_age_max"),
            "negative_similarity": answer.get("negative_similarity"),
            "violation_rate": violation,
            "staleness_at_selection_mean": answer.get("staleness_at_selection_mean"),
            "hard_share": answer.get("hard_share"),
            **memory_stats,
        }

    def load_share(self, step: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images [B, C, H, W] and labels [B] for the step's classes (``data/loader.py``)."""
        images, labels = self.loader.load(step, classes)
        if step + 1 < self.config.train.steps:
            # Step t + 1's classes are known ahead (random ones, or the mining service's answer asked
            # a step earlier: mining/client.py): the loader's workers decode them while t trains.
            upcoming = collectives.broadcast_object(self.classes.peek(step + 1) if self.rank == 0 else None)
            self.loader.prefetch(step + 1, upcoming)
        skipped = self.loader.skipped_samples
        self.metrics.observe_data_skips(skipped - self.skips_reported)
        self.skips_reported = skipped
        return images, labels

    def _class_embeddings(self, ref_ND: torch.Tensor) -> np.ndarray:
        """Mean normalized embedding per class of the global batch, [N, D] in class order."""
        k = self.config.batch.images_per_class
        unit = F.normalize(ref_ND.detach().float(), dim=1)
        return unit.view(-1, k, unit.shape[1]).mean(dim=1).cpu().numpy()

    def evaluate(self, step: int) -> None:
        """Held-out Recall@K with faiss; writes eval.json (rank 0 only)."""
        started = time.perf_counter()
        held = evaluate_shards(
            self.embedder,
            self.plan.eval_shards,
            self.config.data,
            self.config.eval,
            self.device,
            self.config.train.seed,
        )
        labels, recall = held.labels, held.report.recall  # every metric: eval.json "metrics" (eval/retrieval.py)
        if step == self.config.train.steps:
            write_run_gallery(self.run_dir, held, self.plan.eval_shards, self.config)
        self.eval_history.append(EvalPoint(step, recall))
        self.metrics.observe_eval(recall)
        result = EvalResult(
            step=step,
            recall=recall,
            untrained_recall=self.eval_history[0].recall,
            num_queries=int(labels.shape[0]),
            num_classes=int(np.unique(labels).shape[0]),
            eval_shards=self.plan.eval_shards,
            job=self.plan.job_name,
            metrics=held.report,
            history=list(self.eval_history),
        )
        result.write(self.run_dir / run_files.EVAL)
        self.last_eval = result.to_json()  # Ray reports the JSON form (_report_metrics)
        table = format_recall_table({"untrained": result.untrained_recall, f"step {step}": recall})
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s, {labels.shape[0]} held-out images):\n{table}",
            flush=True,
        )

    def report(self, step: int, row: dict[str, Any], with_checkpoint: bool) -> None:
        """``ray.train.report`` on every rank: metrics, and at checkpoint steps this rank's share of
        the checkpoint (engine state, client state, rank 0: the mining state), sealed and merged
        by Ray Train into ``RUN_DIR/checkpoints/step-NNNNNN`` (``checkpoint.py``)."""
        import ray.train

        metrics = self._report_metrics(step, row)
        if self.rank == 0 and self.mirror is not None:
            self.mirror.push()
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        client_state = {
            "step": step,
            "seed": self.config.train.seed,
            "skipped_steps": self.skipped_steps,
            "memory": self.memory.state_dict(),
        }
        save_mining = self.classes.save_state if self.rank == 0 else None
        with tempfile.TemporaryDirectory(prefix="dml-dist-checkpoint-") as scratch:
            directory = checkpoint.save_local(self.engine, Path(scratch), step, client_state, save_mining)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                checkpoint_dir_name=directory.name,
            )

    def _report_metrics(self, step: int, row: dict[str, Any]) -> dict[str, Any]:
        """What Ray sees: the step's figures, the last evaluation, and at the end the run's summary."""
        metrics: dict[str, Any] = {
            "step": step,
            "loss": row["loss"],
            "samples_per_second": row["samples_per_second"],
            "step_seconds": row["step_seconds"],
            "mean_samples_per_second": self.samples_done / max(self.seconds_done, 1e-9),
            "fallbacks": row["fallbacks"],
        }
        if self.last_eval:
            metrics.update({f"recall@{k}": v for k, v in self.last_eval["recall"].items()})
        if step == self.config.train.steps and self.last_eval:
            summary = {k: v for k, v in self.last_eval.items() if k not in ("history", "step")}
            metrics.update(summary, placement=self.placement, run_dir=self.plan.run_dir)
            metrics["curves"] = _join(self.plan.run_dir, "curves.png")
        return metrics


def _join(run_dir: str, name: str) -> str:
    return uri_storage.join(run_dir, name) if uri_storage.is_uri(run_dir) else str(Path(run_dir) / name)


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0
