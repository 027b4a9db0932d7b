"""The per-worker training loop that Ray Train runs on every rank.

One step (``train_step``): rank 0 takes the step's ``MiningAnswer`` from its class source (the
mining service, or random classes: ``mining/client.py``) and broadcasts it; every rank reads its
N/W classes x K images from the shards by index, embeds them, all-gathers the embeddings with
gradient, computes its anchors' share of the loss against the global batch, and steps the
DeepSpeed engine (``train/step.py``; the gradient rule is in ``distributed/collectives.py``).
Rank 0 then publishes the batch's class embeddings to the mining service; every rank re-embeds
the stale classes the answer names (``train/refresh.py``). The step's figures are one
``StepMetrics`` row, observed by the Prometheus sink every step.

``run`` drives the steps: at log steps rank 0 logs the row, every ``eval_every`` steps it
evaluates (``train/evaluation.py``), and at evaluation and checkpoint steps and the last step
every rank reports to Ray Train, with its share of the checkpoint at checkpoint steps
(``train/reporting.py``). Log steps do not report: a report waits for Ray Train's controller to
poll the workers, so it costs a step's worth of time or more; the live figures go to Prometheus.
``train.max_nonfinite_steps`` skipped steps in a row (non-finite loss or gradient) end the run:
every rank saves a checkpoint of the last finite state and returns, the reason in its final
report (``train/errors.py``), so Ray Train does not retry it like a crash.
A worker starts from the newest intact checkpoint when there is one (``train/resume.py``). The run's
files are written by rank 0 into the run directory, on the storage every node mounts
(``run_files.py``), or into a node-local mirror of a URI storage that every report uploads
(``train/node_copies.py``); scratch for a checkpoint is a node-local temporary directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dml_dist.config.loader import config_to_dict
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.data.loader import build_loader
from dml_dist.distributed import collectives
from dml_dist.losses.memory import LossWithMemory, build_memory
from dml_dist.mining.client import ClassSource, MiningClient, RandomClasses
from dml_dist.mining.hardness import violation_rate
from dml_dist.models.param_groups import frozen_backbone
from dml_dist.observability.logging import quiet_libraries
from dml_dist.observability.metrics import NullMetrics, RayMetrics
from dml_dist.observability.step_metrics import StepMetrics
from dml_dist.train import node_copies, reporting
from dml_dist.train.checkpoint import tag_for
from dml_dist.train.engine import build_engine, engine_dtype
from dml_dist.train.errors import STOPPED
from dml_dist.train.evaluation import HeldOutEvaluator
from dml_dist.train.model_sources import build_trained
from dml_dist.train.probe import probe_pairs, probe_violation_rate
from dml_dist.train.refresh import refresh_stale_classes
from dml_dist.train.resume import resume
from dml_dist.train.step import optimizer_step
from dml_dist.train.worker_plan import WorkerPlan


def train_loop_per_worker(plan_dict: dict[str, Any]) -> None:
    """Ray Train entry point: build everything from the plan, then train."""
    quiet_libraries()  # this worker's library loggers and known warnings (observability/logging.py)
    Trainer(localize_shards(WorkerPlan(**plan_dict))).run()


def localize_shards(plan: WorkerPlan) -> WorkerPlan:
    """Shard directories that the driver published to a remote storage are read from node-local
    copies; local shards and streamed remote shards (no manifest) are read where they are."""
    train = node_copies.localize_shards(plan.train_shards, required=False)
    evaluation = node_copies.localize_shards(plan.eval_shards, required=True)
    return dataclasses.replace(plan, train_shards=str(train), eval_shards=str(evaluation))


class Trainer:
    """State of one worker: engine, loss, data, class source, sinks."""

    def __init__(self, plan: WorkerPlan):
        self.config = config = plan.config
        self.plan = plan
        self.rank = collectives.rank()
        self.world_size = collectives.world_size()
        # A URI run directory: rank 0 (the only rank writing run files) writes into a node-local
        # mirror that report() uploads; the other ranks never write there.
        self.mirror = node_copies.RunMirror.of(plan.run_dir, fresh=True) if self.rank == 0 else None
        self.run_dir = self.mirror.local if self.mirror is not None else Path(plan.run_dir)
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
        # The refresh pass and the probe read samples by class index: indexed data only.
        self.indexed = self.loader if isinstance(self.loader, ClassBatchLoader) else None
        self.probe = (
            probe_pairs(
                config.train.seed, self.indexed.class_sizes, config.batch.num_classes, config.batch.images_per_class
            )
            if self.indexed is not None and config.metrics.probe
            else []
        )
        self.skips_reported = 0
        self.local_batch = config.batch.num_classes // self.world_size * config.batch.images_per_class
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        engine_config = dataclasses.replace(config.engine, lr=config.engine.scaled_lr(config.batch.num_classes))
        trained = build_trained(config, use_gpu)  # embedder with its first weights, and loss (model_sources.py)
        self.engine = build_engine(
            trained, engine_config, self.local_batch, use_gpu, local_rank, total_steps=config.train.steps
        )
        self.embedder = self.engine.module.embedder
        self.loss_fn = self.engine.module.loss
        # Cross-batch memory (losses/memory.py): outside the engine's module, the same on every rank.
        self.memory = build_memory(config.memory, config.model.embedding_dim, self.device)
        self.classes = self._class_source()
        self.metrics = self._metrics_sink()
        self.evaluator = HeldOutEvaluator(self.embedder, plan, config, self.device, self.run_dir, self.metrics)
        self.nonfinite_in_a_row = 0
        self.samples_done = 0
        self.seconds_done = 0.0
        # Resume first: on a URI storage it replaces the local mirror by the run's files.
        resumed = resume(self.engine, self.memory, self.classes, self.run_dir, plan, self.mirror, self.rank)
        self.start_step, self.skipped_steps = resumed.step, resumed.skipped_steps
        self.evaluator.eval_history = resumed.eval_history
        self.placement = reporting.announce_placement(self.run_dir, self.rank)

    def _class_source(self) -> ClassSource:
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
        if self.rank == 0 and not self.evaluator.eval_history:
            self.evaluate(step=0)
        self.classes.request(self.start_step)
        run_started = time.perf_counter()
        for step in range(self.start_step, steps):
            done = step + 1
            last = done == steps
            should_log = _due(done, train.log_every) or last
            should_checkpoint = _due(done, train.checkpoint_period()) or last
            should_report = should_checkpoint or _due(done, train.eval_every)
            row = self.train_step(step, should_log)
            stop = self._nonfinite_stop(step, row)
            if self.rank == 0 and (should_log or stop is not None):
                elapsed = time.perf_counter() - run_started
                reporting.log_step(self.run_dir, row, steps, elapsed, self.config.mining.enabled, self.start_step)
            if stop is not None:
                # Not an exception: Ray Train would retry it like a crash, and diverge again.
                self.report(done, row, with_checkpoint=True, stopped=stop)
                return
            if self.rank == 0 and (_due(done, train.eval_every) or last):
                self.evaluate(step=done)
            if self.rank == 0 and last:
                reporting.write_final_files(self.run_dir, self.embedder, config_to_dict(self.config), steps)
            if should_report:
                self.report(done, row, with_checkpoint=should_checkpoint)

    def _nonfinite_stop(self, step: int, row: StepMetrics) -> str | None:
        """Skipped steps are counted; too many in a row stop the run: returns why (the step and
        loss), else None. Every rank returns the same (a step is skipped on all ranks or none)."""
        if not row.skipped:
            self.nonfinite_in_a_row = 0
            return None
        self.nonfinite_in_a_row += 1
        if self.rank == 0:
            print(f"step {step + 1}: loss {row.loss} or a gradient is not finite; step skipped", flush=True)
        if self.nonfinite_in_a_row < self.config.train.max_nonfinite_steps:
            return None
        return (
            f"non-finite loss or gradient: step {step + 1} had loss {row.loss}, and {self.nonfinite_in_a_row} steps "
            f"in a row were skipped (train.max_nonfinite_steps={self.config.train.max_nonfinite_steps}); the last "
            f"finite state is checkpoint {tag_for(step + 1)}; lower engine.lr or enable engine.gradient_clipping"
        )

    def train_step(self, step: int, should_log: bool) -> StepMetrics:
        """One optimizer step on the global batch; returns its figures (``should_log``: a log step,
        where rank 0 also measures the batch's violation rate)."""
        started = time.perf_counter()
        answer = collectives.broadcast_object(self.classes.classes_for(step) if self.rank == 0 else None)
        self.classes.request(step + 1)  # selected by the service while this step trains
        self.metrics.observe_mining(answer)
        images, labels = self.load_share(step, answer.classes)
        data_seconds = time.perf_counter() - started
        lr = float(self.engine.get_lr()[0])  # the rate this step uses (the scheduler moves it in the step)
        frozen = step < self.config.model.freeze_backbone_steps  # head warm-up (models/param_groups.py)
        with frozen_backbone(self.engine.optimizer, self.embedder, frozen):
            result = optimizer_step(
                self.engine,
                LossWithMemory(self.loss_fn, self.memory, step),
                images.to(self.device, self.dtype, non_blocking=True),
                labels.to(self.device),
                self.config.batch.chunk_size,
            )
        ref_ND, ref_labels_N = result.ref_ND, result.ref_labels_N
        self.skipped_steps += int(result.skipped)
        if not result.skipped:  # the same decision on every rank, so the memories stay identical
            self.memory.enqueue(ref_ND, ref_labels_N, step)
        # How hard the batch is for the model (mining/hardness.py): one N x N product, rank 0, log steps.
        violation = violation_rate(ref_ND, ref_labels_N) if self.rank == 0 and should_log else None
        if self.rank == 0 and not result.skipped:
            self.classes.publish(step, np.asarray(answer.classes), self._class_embeddings(ref_ND))
        # Every refresh_every steps: re-embed the stale classes (bank_pos) the answer names.
        if answer.stale_classes and self.indexed is not None:  # ExperimentConfig refuses mining with streaming
            stale = answer.stale_classes
            refresh_stale_classes(self.embedder, self.indexed, self.classes, step, stale, *self._where())
        step_seconds = time.perf_counter() - started  # the probe below measures; it is not training work
        probe = None
        if should_log and self.indexed is not None and self.probe:  # every rank: the forward is collective
            probe = probe_violation_rate(self.embedder, self.indexed, self.probe, *self._where())
        global_samples = ref_ND.shape[0]
        self.samples_done += global_samples
        self.seconds_done += step_seconds
        row = StepMetrics(
            step=step + 1,
            loss=result.loss,
            samples_per_second=global_samples / step_seconds,
            global_batch=global_samples,
            local_samples=images.shape[0],
            skipped=result.skipped,
            skipped_steps=self.skipped_steps,
            step_seconds=step_seconds,
            data_seconds=data_seconds,
            phase_seconds=dict(result.seconds),
            mined=answer.mined,
            fallbacks=self.classes.fallbacks,
            mining_skipped_saves=self.classes.skipped_saves,
            refresh_age_max=answer.refresh_age_max,
            negative_similarity=answer.negative_similarity,
            violation_rate=violation,
            probe_violation_rate=probe,
            staleness_at_selection_mean=answer.staleness_at_selection_mean,
            hard_share=answer.hard_share,
            mining_diagnostics=answer.diagnostics(),
            memory=self.memory.stats(step + 1),
            lr=lr,
            workers=self.world_size,
        )
        self.metrics.observe_step(row)
        return row

    def _where(self) -> tuple[ExperimentConfig, torch.device, torch.dtype]:
        return self.config, self.device, self.dtype

    def load_share(self, step: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images [B, C, H, W] and labels [B] for the step's classes (``bank_pos``)."""
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
        """Mean normalized embedding per class of the global batch, [N, D] in the answer's class order."""
        k = self.config.batch.images_per_class
        unit = F.normalize(ref_ND.detach().float(), dim=1)
        return unit.view(-1, k, unit.shape[1]).mean(dim=1).cpu().numpy()

    def evaluate(self, step: int) -> None:
        """Held-out Recall@K, written to eval.json (rank 0 only; ``train/evaluation.py``)."""
        self.evaluator.evaluate(step)

    def report(self, step: int, row: StepMetrics, with_checkpoint: bool, stopped: str | None = None) -> None:
        """``ray.train.report`` on every rank, with this rank's share of the checkpoint at
        checkpoint steps (``train/reporting.py``); ``stopped``: why the run ends early, which the
        driver reads from this last report's metrics (``train/errors.py``)."""
        import ray.train

        metrics = reporting.ray_metrics(
            row,
            self.samples_done / max(self.seconds_done, 1e-9),
            self.evaluator.last_eval,
            final=step == self.config.train.steps,
            placement=self.placement,
            run_dir=self.plan.run_dir,
        )
        if stopped is not None:
            metrics[STOPPED] = stopped
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
        skipped_before = self.classes.skipped_saves
        reporting.report_with_checkpoint(self.engine, metrics, step, client_state, save_mining)
        self.metrics.observe_mining_skipped_saves(self.classes.skipped_saves - skipped_before)


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0
