"""The per-worker training loop that Ray Train runs on every rank.

One step (``../shared/DESIGN.md``): rank 0 takes the step's N classes from the mining service
(or random ones) and broadcasts them; every rank reads its N/W classes x K images from the
shards by index, embeds them, all-gathers the embeddings with gradient, computes its anchors'
share of the loss against the global batch, and steps the DeepSpeed engine (the gradient rule
is in ``dist/collectives.py``). Rank 0 then publishes the batch's class embeddings to the
mining service, logs, and evaluates every ``eval_every`` steps; every rank checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dml_dist.config.loader import config_to_dict, from_dict
from dml_dist.config.schema import ExperimentConfig
from dml_dist.data.loader import build_loader
from dml_dist.data.shards import skipped_samples_total
from dml_dist.dist import collectives
from dml_dist.eval.heldout import evaluate_shards, write_run_gallery
from dml_dist.eval.retrieval import format_recall_table
from dml_dist.losses import build_loss
from dml_dist.mining.client import MiningClient, RandomClasses
from dml_dist.mining.refresh import refresh_stale_classes
from dml_dist.mining.service import BANK_FILE
from dml_dist.models import build_model
from dml_dist.models.embedder import EmbedderWithLoss
from dml_dist.observability.metrics import NullMetrics, PrometheusMetrics
from dml_dist.train import checkpoint, run_files
from dml_dist.train.engine import build_engine, engine_dtype
from dml_dist.train.step import optimizer_step

NONFINITE_MARK = "non-finite loss:"


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


@dataclass
class WorkerPlan:
    """What the driver hands every worker (plain data plus the mining actor handle)."""

    config: dict[str, Any]
    train_shards: str
    eval_shards: str
    run_dir: str
    job_name: str
    mining_actor: Any = None


def train_loop_per_worker(plan_dict: dict[str, Any]) -> None:
    """Ray Train entry point: build everything from the plan, then train."""
    plan = WorkerPlan(**plan_dict)
    config = from_dict(ExperimentConfig, plan.config, prefix="")
    Trainer(config, plan).run()


class Trainer:
    """State of one worker: engine, loss, data, class source, sinks."""

    def __init__(self, config: ExperimentConfig, plan: WorkerPlan):
        self.config = config
        self.plan = plan
        self.run_dir = Path(plan.run_dir)
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
        self.engine = build_engine(trained, engine_config, self.local_batch, use_gpu, local_rank)
        self.embedder = self.engine.module.embedder
        self.loss_fn = self.engine.module.loss
        self.classes = self._class_source()
        self.metrics = self._metrics_sink()
        self.eval_history: list[dict[str, Any]] = []
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.start_step = self._resume()

    def _resume(self) -> int:
        """Restore the latest intact checkpoint of this run directory, if any; returns its step.

        Ray Train calls the loop again after a worker failure, and ``dml-dist train --resume``
        starts it on a run directory with checkpoints: both continue from here.
        """
        checkpoints = self.run_dir / run_files.CHECKPOINTS
        good = checkpoint.latest_good(checkpoints)
        if good is None:
            return 0
        state = checkpoint.load(self.engine, checkpoints, good)
        step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.rank == 0:
            print(f"resuming from {checkpoints / good.tag} at step {step}", flush=True)
            run_files.append_jsonl(self.run_dir / "resumes.jsonl", {"resumed_from": step, "time": time.time()})
            run_files.truncate_metrics(self.run_dir / run_files.METRICS, after_step=step)
            eval_file = self.run_dir / run_files.EVAL
            if eval_file.is_file():
                history = json.loads(eval_file.read_text())["history"]
                self.eval_history = [h for h in history if h["step"] <= step]
        return step

    def _class_source(self) -> RandomClasses:
        args = (self.config.train.seed, self.loader.num_classes, self.config.batch.num_classes)
        if self.rank == 0 and self.plan.mining_actor is not None:
            return MiningClient(self.plan.mining_actor, self.config.mining.timeout_s, *args)
        return RandomClasses(*args)

    def _metrics_sink(self) -> NullMetrics:
        settings = self.config.metrics
        if not settings.enabled:
            return NullMetrics()
        port = settings.port + self.rank if settings.port else 0
        sink = PrometheusMetrics(self.plan.job_name, self.rank, settings.host, port, settings.targets_dir)
        print(f"[rank {self.rank}] metrics: {sink.address}", flush=True)
        return sink

    def run(self) -> None:
        steps = self.config.train.steps
        if self.rank == 0 and not self.eval_history:
            self.evaluate(step=0)
        self.classes.request(self.start_step)
        for step in range(self.start_step, steps):
            row = self.train_step(step)
            self._count_nonfinite(step, row)
            done = step + 1
            if self.rank == 0 and (done % self.config.train.log_every == 0 or done == steps):
                run_files.append_jsonl(self.run_dir / run_files.METRICS, row)
                print(
                    f"step {done}/{steps}  loss {row['loss']:.4f}  {row['samples_per_second']:.0f} samples/s  "
                    f"{row['step_seconds']:.3f} s/step  mined={row['mined']}",
                    flush=True,
                )
            if self.rank == 0 and (_due(done, self.config.train.eval_every) or done == steps):
                self.evaluate(step=done)
            if _due(done, self.config.train.checkpoint_every) or done == steps:
                self.save_checkpoint(done)
        if self.rank == 0:
            run_files.save_embedder(
                self.run_dir / run_files.EMBEDDER, self.embedder, config_to_dict(self.config), steps
            )
        self.metrics.close()
        self._report_to_ray()

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
        result = optimizer_step(
            self.engine,
            self.loss_fn,
            images.to(self.device, self.dtype, non_blocking=True),
            labels.to(self.device),
            self.config.batch.chunk_size,
        )
        loss, ref_ND = result.loss, result.ref_ND
        self.skipped_steps += int(result.skipped)
        if self.rank == 0 and not result.skipped:
            self.classes.publish(step, np.asarray(answer["classes"]), self._class_embeddings(ref_ND))
        stale = answer.get("stale_classes", [])  # every refresh_every steps: re-embed stale classes
        refresh_stale_classes(
            self.embedder, self.loader, self.classes, step, stale, self.config, self.device, self.dtype
        )
        step_seconds = time.perf_counter() - started
        global_samples = ref_ND.shape[0]
        self.metrics.observe_step(
            loss, global_samples / step_seconds, step_seconds, {"data": data_seconds, **result.seconds}
        )
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
        }

    def load_share(self, step: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images [B, C, H, W] and labels [B] for the step's classes (``data/loader.py``)."""
        images, labels = self.loader.load(step, classes)
        if step + 1 < self.config.train.steps:
            # Step t + 1's classes are known ahead (random ones, or the mining service's answer asked
            # a step earlier: mining/client.py): the loader's workers decode them while t trains.
            upcoming = collectives.broadcast_object(self.classes.peek(step + 1) if self.rank == 0 else None)
            self.loader.prefetch(step + 1, upcoming)
        skipped = skipped_samples_total()
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
        self.eval_history.append({"step": step, "recall": {str(k): v for k, v in recall.items()}})
        self.metrics.observe_eval(recall)
        untrained = self.eval_history[0]["recall"]
        result = {
            "step": step,
            "recall": {str(k): v for k, v in recall.items()},
            "untrained_recall": untrained,
            "num_queries": int(labels.shape[0]),
            "num_classes": int(np.unique(labels).shape[0]),
            "eval_shards": self.plan.eval_shards,
            "job": self.plan.job_name,
            "history": self.eval_history,
            "metrics": held.report.as_dict(),
        }
        run_files.write_json_atomic(self.run_dir / run_files.EVAL, result)
        table = format_recall_table({"untrained": {int(k): v for k, v in untrained.items()}, f"step {step}": recall})
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s, {labels.shape[0]} held-out images):\n{table}",
            flush=True,
        )

    def save_checkpoint(self, step: int) -> None:
        """Engine state of every rank plus our client state, sealed when complete (``checkpoint.py``).

        The sampler needs no state of its own (it is a pure function of seed and step); the
        mining bank is saved beside the checkpoints by the service.
        """
        self.classes.save_bank(str(self.run_dir / BANK_FILE))  # the mining bank (rank 0; a no-op elsewhere)
        client_state = {"step": step, "seed": self.config.train.seed, "skipped_steps": self.skipped_steps}
        checkpoint.save(
            self.engine, self.run_dir / run_files.CHECKPOINTS, step, client_state, self.config.train.keep_checkpoints
        )

    def _report_to_ray(self) -> None:
        import ray.train

        ray.train.report({"steps": self.config.train.steps, "rank": self.rank})


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0
