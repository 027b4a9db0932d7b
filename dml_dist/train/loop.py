"""The per-worker training loop that Ray Train runs on every rank.

One step (``../shared/DESIGN.md``): rank 0 takes the step's N classes from the mining service
(or random ones) and broadcasts them; every rank reads its N/W classes x K images from the
shards by index, embeds them, all-gathers the embeddings with gradient, computes its anchors'
share of the loss against the global batch, and steps the DeepSpeed engine (the gradient rule
is in ``dist/collectives.py``). Rank 0 then publishes the batch's class embeddings to the
mining service, logs, and evaluates every ``eval_every`` steps; every rank checkpoints.
"""

from __future__ import annotations

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
from dml_dist.data.images import decode_batch
from dml_dist.data.sampler import rank_share
from dml_dist.data.shards import IndexedShards
from dml_dist.dist import collectives
from dml_dist.eval.embed import embed_shards
from dml_dist.eval.retrieval import format_recall_table, recall_at_k
from dml_dist.losses import build_loss
from dml_dist.mining.client import MiningClient, RandomClasses
from dml_dist.models import build_model
from dml_dist.observability.metrics import NullMetrics, PrometheusMetrics
from dml_dist.train import run_files
from dml_dist.train.engine import build_engine, engine_dtype


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
        self.shards = IndexedShards(plan.train_shards)
        self.class_sizes = self.shards.class_sizes()
        self.local_batch = config.batch.num_classes // self.world_size * config.batch.images_per_class
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.engine = build_engine(build_model(config.model), config.engine, self.local_batch, use_gpu, local_rank)
        self.loss_fn = build_loss(config.loss.name, **config.loss.params)
        self.classes = self._class_source()
        self.metrics = self._metrics_sink()
        self.eval_history: list[dict[str, Any]] = []

    def _class_source(self) -> RandomClasses:
        args = (self.config.train.seed, self.shards.num_classes, self.config.batch.num_classes)
        if self.rank == 0 and self.plan.mining_actor is not None:
            return MiningClient(self.plan.mining_actor, self.config.mining.timeout_s, *args)
        return RandomClasses(*args)

    def _metrics_sink(self) -> NullMetrics:
        settings = self.config.metrics
        if not settings.enabled:
            return NullMetrics()
        port = settings.port + self.rank if settings.port else 0
        sink = PrometheusMetrics(self.plan.job_name, self.rank, settings.host, port)
        print(f"[rank {self.rank}] metrics: {sink.address}", flush=True)
        return sink

    def run(self) -> None:
        steps = self.config.train.steps
        if self.rank == 0:
            self.evaluate(step=0)
        self.classes.request(0)
        for step in range(steps):
            row = self.train_step(step)
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
                self.run_dir / run_files.EMBEDDER, self.engine.module, config_to_dict(self.config), steps
            )
        self._report_to_ray()

    def train_step(self, step: int) -> dict[str, Any]:
        """One optimizer step on the global batch; returns the row logged to metrics.jsonl."""
        started = time.perf_counter()
        answer = collectives.broadcast_object(self.classes.classes_for(step) if self.rank == 0 else None)
        self.classes.request(step + 1)  # selected by the service while this step trains
        self.metrics.observe_mining(answer)
        images, labels = self.load_share(step, answer["classes"])
        data_seconds = time.perf_counter() - started
        emb_BD = self.engine(images.to(self.device, self.dtype, non_blocking=True)).float()
        ref_ND = collectives.gather_with_grad(emb_BD)
        ref_labels_N = collectives.gather_no_grad(labels.to(self.device))
        loss_share = self.loss_fn(
            emb_BD, labels.to(self.device), ref_ND, ref_labels_N, ref_start=self.rank * emb_BD.shape[0]
        )
        self.engine.backward(collectives.scale_for_gradient_averaging(loss_share))
        self.engine.step()
        loss = float(collectives.all_reduce_sum(loss_share))
        if self.rank == 0:
            self.classes.publish(step, np.asarray(answer["classes"]), self._class_embeddings(ref_ND))
        step_seconds = time.perf_counter() - started
        global_samples = ref_ND.shape[0]
        self.metrics.observe_step(loss, global_samples / step_seconds, step_seconds)
        return {
            "step": step + 1,
            "loss": loss,
            "samples_per_second": global_samples / step_seconds,
            "step_seconds": step_seconds,
            "data_seconds": data_seconds,
            "mined": bool(answer.get("mined", False)),
            "fallbacks": self.classes.fallbacks,
            "refresh_age_max": answer.get("refresh_age_max"),
        }

    def load_share(self, step: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's images [B, 1, H, W] and labels [B] for the step's classes."""
        share = rank_share(
            self.config.train.seed,
            step,
            classes,
            self.class_sizes,
            self.config.batch.images_per_class,
            self.world_size,
            self.rank,
        )
        images = decode_batch([self.shards.read(c, s) for c, s in share], self.config.data.procedural.image_size)
        labels = torch.tensor([self.shards.labels[c] for c, _ in share], dtype=torch.int64)
        return images, labels

    def _class_embeddings(self, ref_ND: torch.Tensor) -> np.ndarray:
        """Mean normalized embedding per class of the global batch, [N, D] in class order."""
        k = self.config.batch.images_per_class
        unit = F.normalize(ref_ND.detach().float(), dim=1)
        return unit.view(-1, k, unit.shape[1]).mean(dim=1).cpu().numpy()

    def evaluate(self, step: int) -> None:
        """Held-out Recall@K with faiss; writes eval.json (rank 0 only)."""
        started = time.perf_counter()
        emb, labels = embed_shards(
            self.engine.module,
            self.plan.eval_shards,
            self.config.data.procedural.image_size,
            self.config.eval.batch_size,
            self.device,
        )
        recall = recall_at_k(emb, labels, self.config.eval.recall_at)
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
            "history": self.eval_history,
        }
        run_files.write_json_atomic(self.run_dir / run_files.EVAL, result)
        table = format_recall_table({"untrained": {int(k): v for k, v in untrained.items()}, f"step {step}": recall})
        print(
            f"eval at step {step} ({time.perf_counter() - started:.1f} s, {labels.shape[0]} held-out images):\n{table}",
            flush=True,
        )

    def save_checkpoint(self, step: int) -> None:
        """DeepSpeed checkpoint of every rank's engine state under checkpoints/step-NNNNNN."""
        self.engine.save_checkpoint(
            str(self.run_dir / run_files.CHECKPOINTS), tag=f"step-{step:06d}", client_state={"step": step}
        )

    def _report_to_ray(self) -> None:
        import ray.train

        ray.train.report({"steps": self.config.train.steps, "rank": self.rank})


def _due(done: int, every: int) -> bool:
    return every > 0 and done % every == 0
