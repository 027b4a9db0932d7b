"""The per-worker training loop that Ray Train runs on every rank.

A worker is built from its parts (``build_trainer``; the parts: ``train/worker_parts.py``), with
one ``TrainState`` (step, skipped steps, memory, class source, evaluation history:
``train/train_state.py``) that its ``Checkpointer`` saves and restores with the engine.

One step (``train_step``) reads top to bottom:
1. ``next_batch``: rank 0 takes the step's ``MiningAnswer`` and the next step's classes from its
   class source (the mining service, or random classes: ``mining/client.py``), and one broadcast
   per step hands both to every rank; every rank reads its N/W classes x K images from the shards
   by index, and the loader starts decoding the next step's.
2. ``optimise``: every rank embeds its images, all-gathers the embeddings with gradient, computes
   its anchors' share of the loss against the global batch, and steps the DeepSpeed engine
   (``train/step.py``; the gradient rule is in ``distributed/collectives.py``).
3. ``feedback``: rank 0 publishes the batch's class embeddings to the mining service; every rank
   re-embeds the stale classes the answer names (``train/refresh.py``).
The step's figures are one ``StepMetrics`` row that ``log`` hands to every sink: Prometheus every
step, ``metrics.jsonl`` at log steps; Ray's report reads the same row.

``run`` drives the steps: at log steps rank 0 logs the row, every ``eval_every`` steps it
evaluates (``train/evaluation.py``), and at evaluation and checkpoint steps and the last step
every rank reports to Ray Train, with its share of the checkpoint at checkpoint steps
(``train/reporting.py``, ``train/checkpointer.py``). Log steps do not report: a report waits for
Ray Train's controller to poll the workers, so it costs a step's worth of time or more; the live
figures go to Prometheus. ``train.max_nonfinite_steps`` skipped steps in a row (non-finite loss
or gradient) end the run: every rank saves a checkpoint of the last finite state and returns,
the reason in its final report (``train/errors.py``), so Ray Train does not retry it like a crash.
A worker starts from the newest intact checkpoint when there is one (``train/resume.py``). The
run's files are written by rank 0 into the run directory, on the storage every node mounts
(``run_files.py``), or into a node-local mirror of a URI storage that every report uploads
(``train/node_copies.py``); scratch for a checkpoint is a node-local temporary directory.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dml_dist.config.loader import config_to_dict
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.indexed_loader import ClassBatchLoader
from dml_dist.distributed import collectives
from dml_dist.losses.memory import LossWithMemory
from dml_dist.mining.answer import MiningAnswer
from dml_dist.mining.hardness import violation_rate
from dml_dist.models.param_groups import frozen_backbone
from dml_dist.observability.logging import quiet_libraries
from dml_dist.observability.step_metrics import StepMetrics
from dml_dist.train import node_copies, reporting
from dml_dist.train.checkpoint import tag_for
from dml_dist.train.checkpointer import Checkpointer
from dml_dist.train.errors import STOPPED
from dml_dist.train.evaluation import HeldOutEvaluator
from dml_dist.train.probe import probe_pairs, probe_violation_rate
from dml_dist.train.refresh import refresh_stale_classes
from dml_dist.train.step import StepResult, optimizer_step
from dml_dist.train.train_state import TrainState
from dml_dist.train.worker_parts import WorkerParts, build_parts
from dml_dist.train.worker_plan import WorkerPlan


def train_loop_per_worker(plan_dict: dict[str, Any]) -> None:
    """Ray Train entry point: build the worker from the plan's parts, then train."""
    quiet_libraries()  # this worker's library loggers and known warnings (observability/logging.py)
    build_trainer(localize_shards(WorkerPlan(**plan_dict))).run()


def build_trainer(plan: WorkerPlan) -> Trainer:
    """A worker of a Ray Train run: every part from the plan (``train/worker_parts.py``)."""
    return Trainer(plan, build_parts(plan))


def localize_shards(plan: WorkerPlan) -> WorkerPlan:
    """Shard directories that the driver published to a remote storage are read from node-local
    copies; local shards and streamed remote shards (no manifest) are read where they are."""
    train = node_copies.localize_shards(plan.train_shards, required=False)
    evaluation = node_copies.localize_shards(plan.eval_shards, required=True)
    return dataclasses.replace(plan, train_shards=str(train), eval_shards=str(evaluation))


class Trainer:
    """One worker: trains with the parts it is handed, its ``TrainState`` saved by its ``Checkpointer``."""

    def __init__(self, plan: WorkerPlan, parts: WorkerParts):
        self.config = config = plan.config
        self.plan = plan
        self.rank = collectives.rank()
        self.world_size = collectives.world_size()
        self.device, self.dtype = parts.device, parts.dtype
        self.loader, self.engine, self.memory = parts.loader, parts.engine, parts.memory
        self.classes, self.metrics = parts.classes, parts.metrics
        self.run_dir, self.mirror = parts.run_dir, parts.mirror
        self.embedder = self.engine.module.embedder
        self.loss_fn = self.engine.module.loss
        # The refresh pass and the probe read samples by class index: indexed data only.
        self.indexed = self.loader if isinstance(self.loader, ClassBatchLoader) else None
        self.probe = (
            probe_pairs(
                config.train.seed, self.indexed.class_sizes, config.batch.num_classes, config.batch.images_per_class
            )
            if self.indexed is not None and config.metrics.probe
            else []
        )
        self.state = TrainState(config.train.seed, self.memory, self.classes)
        self.evaluator = HeldOutEvaluator(
            self.embedder, plan, config, self.device, self.run_dir, self.metrics, self.state.eval_history
        )
        self.checkpointer = Checkpointer(
            self.engine, self.state, plan, self.run_dir, self.mirror, self.rank, parts.reported_checkpoint
        )
        self.skips_reported = 0
        self.nonfinite_in_a_row = 0
        self.samples_done = 0
        self.seconds_done = 0.0
        # Restore first: on a URI storage it replaces the local mirror by the run's files.
        self.checkpointer.restore()
        self.start_step = self.state.step
        self.placement = reporting.announce_placement(self.run_dir, self.rank, parts.node_id)

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
            self.state.step = done
            stop = self._nonfinite_stop(step, row)
            self.log(row, should_log or stop is not None, time.perf_counter() - run_started)
            if stop is not None:
                # Not an exception: Ray Train would retry it like a crash, and diverge again.
                self.report(row, with_checkpoint=True, stopped=stop)
                return
            if self.rank == 0 and (_due(done, train.eval_every) or last):
                self.evaluate(step=done)
            if self.rank == 0 and last:
                reporting.write_final_files(self.run_dir, self.embedder, config_to_dict(self.config), steps)
            if should_report:
                self.report(row, with_checkpoint=should_checkpoint)

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
        """One optimizer step on the global batch, top to bottom: the next batch, the optimizer
        step, the feedback to the class source; returns its figures (``should_log``: a log step,
        where rank 0 also measures the batch's violation rate and every rank the probe's)."""
        started = time.perf_counter()
        answer, images, labels = self.next_batch(step)
        data_seconds = time.perf_counter() - started
        lr = float(self.engine.get_lr()[0])  # the rate this step uses (the scheduler moves it in the step)
        result = self.optimise(step, images, labels)
        violation = self.feedback(step, answer, result, should_log)
        step_seconds = time.perf_counter() - started  # the probe below measures; it is not training work
        probe = None
        if should_log and self.indexed is not None and self.probe:  # every rank: the forward is collective
            probe = probe_violation_rate(self.embedder, self.indexed, self.probe, *self._where())
        global_samples = result.ref_ND.shape[0]
        self.samples_done += global_samples
        self.seconds_done += step_seconds
        row = StepMetrics(
            step=step + 1,
            loss=result.loss,
            samples_per_second=global_samples / step_seconds,
            global_batch=global_samples,
            local_samples=images.shape[0],
            skipped=result.skipped,
            skipped_steps=self.state.skipped_steps,
            step_seconds=step_seconds,
            data_seconds=data_seconds,
            phase_seconds=dict(result.seconds),
            mining=answer.figures(),
            fallbacks=self.classes.fallbacks,
            mining_skipped_saves=self.classes.skipped_saves,
            data_skipped_samples=self._new_data_skips(),
            violation_rate=violation,
            probe_violation_rate=probe,
            memory=self.memory.stats(step + 1),
            lr=lr,
            workers=self.world_size,
        )
        return row

    def log(self, row: StepMetrics, should_log: bool, elapsed_seconds: float) -> None:
        """The step's one row to its sinks: Prometheus every step (every rank), ``metrics.jsonl``
        and the progress line at log steps (rank 0); Ray's report reads the same row (``report``)."""
        self.metrics.observe_step(row)
        if self.rank == 0 and should_log:
            steps, mining = self.config.train.steps, self.config.mining.enabled
            reporting.log_step(self.run_dir, row, steps, elapsed_seconds, mining, self.start_step)

    def next_batch(self, step: int) -> tuple[MiningAnswer, torch.Tensor, torch.Tensor]:
        """The step's ``MiningAnswer`` and this rank's images [B, C, H, W] and labels [B].

        Rank 0 takes the answer for ``step`` and the classes of ``step + 1`` from its class
        source, and one broadcast hands both to every rank: the next step's classes are known
        ahead (random ones, or the service's answer asked a step earlier: ``mining/client.py``),
        so the loader's workers decode them while this step trains.
        """
        upcoming: list[int] | None = None
        if self.rank == 0:
            answer = self.classes.classes_for(step)
            self.classes.request(step + 1)  # selected by the service while this step trains
            if step + 1 < self.config.train.steps:
                upcoming = self.classes.peek(step + 1)
        answer, upcoming = collectives.broadcast_object((answer, upcoming) if self.rank == 0 else None)
        images, labels = self.loader.load(step, answer.classes)
        if upcoming is not None:
            self.loader.prefetch(step + 1, upcoming)
        return answer, images, labels

    def _new_data_skips(self) -> int:
        """Samples the loader skipped as bad data since the last call."""
        skipped = self.loader.skipped_samples
        new, self.skips_reported = skipped - self.skips_reported, skipped
        return new

    def optimise(self, step: int, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """The DeepSpeed step on the global batch (``train/step.py``); a finite step also writes
        the cross-batch memory (the same decision on every rank, so the memories stay identical)."""
        frozen = step < self.config.model.freeze_backbone_steps  # head warm-up (models/param_groups.py)
        with frozen_backbone(self.engine.optimizer, self.embedder, frozen):
            result = optimizer_step(
                self.engine,
                LossWithMemory(self.loss_fn, self.memory, step),
                images.to(self.device, self.dtype, non_blocking=True),
                labels.to(self.device),
                self.config.batch.chunk_size,
            )
        self.state.skipped_steps += int(result.skipped)
        if not result.skipped:
            self.memory.enqueue(result.ref_ND, result.ref_labels_N, step)
        return result

    def feedback(self, step: int, answer: MiningAnswer, result: StepResult, should_log: bool) -> float | None:
        """What the step tells the class source: rank 0 publishes the batch's class embeddings,
        every rank re-embeds the stale classes the answer names (``train/refresh.py``). Returns
        the batch's violation rate (``mining/hardness.py``: one N x N product; rank 0, log steps)."""
        ref_ND, ref_labels_N = result.ref_ND, result.ref_labels_N
        violation = violation_rate(ref_ND, ref_labels_N) if self.rank == 0 and should_log else None
        if self.rank == 0 and not result.skipped:
            self.classes.publish(step, np.asarray(answer.classes), self._class_embeddings(ref_ND))
        if answer.stale_classes and self.indexed is not None:  # ExperimentConfig refuses mining with streaming
            stale = answer.stale_classes
            refresh_stale_classes(self.embedder, self.indexed, self.classes, step, stale, *self._where())
        return violation

    def _where(self) -> tuple[ExperimentConfig, torch.device, torch.dtype]:
        return self.config, self.device, self.dtype

    def _class_embeddings(self, ref_ND: torch.Tensor) -> np.ndarray:
        """Mean normalized embedding per class of the global batch, [N, D] in the answer's class order."""
        k = self.config.batch.images_per_class
        unit = F.normalize(ref_ND.detach().float(), dim=1)
        return unit.view(-1, k, unit.shape[1]).mean(dim=1).cpu().numpy()

    def evaluate(self, step: int) -> None:
        """Held-out Recall@K, written to eval.json (rank 0 only; ``train/evaluation.py``)."""
        self.evaluator.evaluate(step)

    def report(self, row: StepMetrics, with_checkpoint: bool, stopped: str | None = None) -> None:
        """``ray.train.report`` of step ``state.step`` on every rank, with this rank's share of the
        checkpoint at checkpoint steps (``train/checkpointer.py``); ``stopped``: why the run ends
        early, which the driver reads from this last report's metrics (``train/errors.py``)."""
        import ray.train

        metrics = reporting.ray_metrics(
            row,
            self.samples_done / max(self.seconds_done, 1e-9),
            self.evaluator.last_eval,
            final=self.state.step == self.config.train.steps,
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
        skipped_before = self.classes.skipped_saves
        self.checkpointer.report(metrics)
        self.metrics.observe_mining_skipped_saves(self.classes.skipped_saves - skipped_before)


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0
