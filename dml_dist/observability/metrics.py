"""Training metrics of a worker, exported through Ray's metrics agent; a null sink when off.

Route (measured and chosen for multi-node runs): every series is recorded with
``ray.util.metrics`` in the worker process. Each node's Ray metrics agent exports the series of
the workers on that node, and Ray lists every node's agent in its service-discovery file on the
head (``/tmp/ray/prom_metrics_service_discovery.json``), which ``cluster/prometheus/prometheus.yml``
already reads for Ray's own metrics. So one Prometheus on the head scrapes the workers of every
node with no file copied by hand and no port opened per worker. The alternative, an HTTP
endpoint per worker registered in a directory the head watches, needs a shared directory or a
target file copied per node, a port per worker reachable across nodes, and its own cleanup.
Cost of the Ray route: the agent exports on its own period (about 10 s by Ray's default), so a
value reaches Prometheus that much later, which a dashboard refreshing every 5 to 10 s hides; Ray prefixes names with ``ray_`` and adds its own labels (``NodeAddress``, ``WorkerId``,
``SessionName``).

Series (Prometheus names; labels ``run`` and ``rank``, never ``job``, which Prometheus sets):
- ``ray_dml_dist_samples_total``: samples this rank trained on; global throughput is
  ``sum by (run) (rate(ray_dml_dist_samples_total[1m]))``;
- ``ray_dml_dist_steps_total``: steps done;
- ``ray_dml_dist_step_seconds`` (histogram): wall time of a step;
- ``ray_dml_dist_step_phase_seconds{phase=...}`` (histogram): time in data, forward,
  all_gather, loss, backward and optimizer;
- ``ray_dml_dist_loss``: global loss of the last step;
- ``ray_dml_dist_learning_rate``: learning rate of the last step; samples/s per worker is
  ``sum by (run, rank) (rate(ray_dml_dist_samples_total[1m]))``;
- ``ray_dml_dist_memory_peak_rss_bytes``, ``ray_dml_dist_memory_gpu_peak_bytes`` (GPU workers);
- ``ray_dml_dist_mining_refresh_age_steps{stat="max"|"mean"}``: age of the class bank;
- ``ray_dml_dist_mining_selection_seconds``: time the service took to pick the last batch;
- ``ray_dml_dist_mining_fallbacks_total``: steps that used random classes (service slow, dead,
  or not warm yet);
- ``ray_dml_dist_mining_skipped_saves_total``: checkpoints that went on without the mining
  service's state (it was late or failed; ``mining/client.py``);
- ``ray_dml_dist_mining_negative_similarity``: mean over the last batch's classes of the cosine
  similarity (by the class bank) to the closest other class of the batch;
- ``ray_dml_dist_eval_recall{k="1"...}``: the last held-out Recall@K;
- ``ray_dml_dist_mining_violation_rate``: share of the batch's anchors whose hardest negative is
  more similar than their hardest positive (rank 0, at log steps, mining on or off);
  ``ray_dml_dist_mining_probe_violation_rate``: the same on a fixed random probe batch
  (``train/probe.py``), the baseline that the trained batch's rate is read against;
- ``ray_dml_dist_mining_staleness_steps{stat}``: steps since the class centres the last selection
  relied on were refreshed; ``ray_dml_dist_mining_hard_share{rule}``: share of its classes mined;
- ``ray_dml_dist_data_skipped_samples_total``: training samples skipped as bad data;
- ``ray_dml_dist_xbm_fill_ratio``, ``ray_dml_dist_xbm_age_steps{stat="mean"|"max"}``,
  ``ray_dml_dist_xbm_bytes``: the cross-batch memory's fill, the age of its rows, its size
  (only when ``memory.size`` > 0).

A step's figures, its mining figures and data skips included, come as one ``StepMetrics``
(``observability/step_metrics.py``): the same row that ``metrics.jsonl`` and Ray's report read.
An evaluation and a checkpoint without the mining service's state are events of their own.
"""

from __future__ import annotations

import resource
from typing import Any

import torch

from dml_dist.observability.step_metrics import MiningFigures, StepMetrics

STEP_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


class NullMetrics:
    """Accepts every observation and does nothing."""

    def observe_step(self, row: StepMetrics) -> None:
        pass

    def observe_eval(self, recall: dict[int, float]) -> None:
        pass

    def observe_mining_skipped_saves(self, count: int) -> None:
        pass


class RayMetrics(NullMetrics):
    """Records this worker's series with ``ray.util.metrics`` (call inside a Ray worker)."""

    def __init__(self, run: str, rank: int):
        from ray.util.metrics import Counter, Gauge, Histogram

        keys = ("run", "rank")
        self._tags = {"run": run, "rank": str(rank)}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Gauge(name, description=doc, tag_keys=(*keys, *extra))

        def counter(name: str, doc: str) -> Any:
            return Counter(name, description=doc, tag_keys=keys)

        self._samples = counter("dml_dist_samples", "Samples this rank trained on")
        self._steps = counter("dml_dist_steps", "Training steps done")
        self._fallbacks = counter("dml_dist_mining_fallbacks", "Steps that used random classes (slow, dead, cold)")
        self._data_skips = counter("dml_dist_data_skipped_samples", "Training samples skipped as bad data")
        self._skipped_saves = counter(
            "dml_dist_mining_skipped_saves", "Checkpoints without the mining service's state (late or failed)"
        )
        self._step = Histogram(
            "dml_dist_step_seconds", description="Wall time of a step", boundaries=STEP_BUCKETS_S, tag_keys=keys
        )
        self._phase = Histogram(
            "dml_dist_step_phase_seconds",
            description="Time of a step spent in each phase",
            boundaries=STEP_BUCKETS_S,
            tag_keys=(*keys, "phase"),
        )
        self._loss = gauge("dml_dist_loss", "Global loss of the last step")
        self._lr = gauge("dml_dist_learning_rate", "Learning rate of the last step")
        self._rss = gauge("dml_dist_memory_peak_rss_bytes", "Peak resident memory of this worker")
        self._gpu_memory = gauge("dml_dist_memory_gpu_peak_bytes", "Peak GPU memory allocated by torch")
        self._age = gauge("dml_dist_mining_refresh_age_steps", "Steps since class embeddings were refreshed", ("stat",))
        self._selection = gauge("dml_dist_mining_selection_seconds", "Time to select the last batch's classes")
        self._negative_similarity = gauge(
            "dml_dist_mining_negative_similarity",
            "Mean cosine similarity of the last batch's classes to their closest other class",
        )
        self._recall = gauge("dml_dist_eval_recall", "Held-out Recall@K", ("k",))
        self._violation = gauge(
            "dml_dist_mining_violation_rate",
            "Share of anchors whose hardest in-batch negative beats their hardest positive",
        )
        self._probe_violation = gauge(
            "dml_dist_mining_probe_violation_rate",
            "The violation rate of a fixed random probe batch (the baseline of the trained batch's)",
        )
        self._staleness = gauge(
            "dml_dist_mining_staleness_steps", "Steps since the centres a selection relied on were refreshed", ("stat",)
        )
        self._hard_share = gauge("dml_dist_mining_hard_share", "Share of the batch's classes the rule mined", ("rule",))
        self._memory_fill = gauge("dml_dist_xbm_fill_ratio", "Share of the cross-batch memory's rows written")
        self._memory_age = gauge("dml_dist_xbm_age_steps", "Age in steps of the cross-batch memory's rows", ("stat",))
        self._memory_bytes = gauge("dml_dist_xbm_bytes", "Bytes the cross-batch memory holds on this rank")

    def observe_step(self, row: StepMetrics) -> None:
        tags = self._tags
        self._loss.set(row.loss, tags=tags)
        if row.lr is not None:
            self._lr.set(row.lr, tags=tags)
        self._samples.inc(row.local_samples, tags=tags)
        self._steps.inc(1, tags=tags)
        self._step.observe(row.step_seconds, tags=tags)
        for phase, seconds in {"data": row.data_seconds, **row.phase_seconds}.items():
            self._phase.observe(seconds, tags={**tags, "phase": phase})
        self._rss.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, tags=tags)
        if torch.cuda.is_available():
            self._gpu_memory.set(torch.cuda.max_memory_allocated(), tags=tags)
        for gauge_, rate in ((self._violation, row.violation_rate), (self._probe_violation, row.probe_violation_rate)):
            if rate is not None and rate == rate:  # None off rank 0 and between log steps, NaN without pairs
                gauge_.set(rate, tags=tags)
        if row.memory:  # empty: memory off
            self._memory_fill.set(row.memory["memory_fill"], tags=tags)
            self._memory_age.set(row.memory["memory_age_mean_steps"], tags={**tags, "stat": "mean"})
            self._memory_age.set(row.memory["memory_age_max_steps"], tags={**tags, "stat": "max"})
            self._memory_bytes.set(row.memory.get("memory_bytes", 0.0), tags=tags)
        if row.data_skipped_samples > 0:
            self._data_skips.inc(row.data_skipped_samples, tags=tags)
        self._observe_mining(row.mining)

    def _observe_mining(self, answer: MiningFigures) -> None:
        tags = self._tags
        if answer.fallback:
            self._fallbacks.inc(1, tags=tags)
        if answer.refresh_age_max is not None:  # a service answered (not random classes of the client)
            self._age.set(answer.refresh_age_max, tags={**tags, "stat": "max"})
            self._age.set(answer.refresh_age_mean, tags={**tags, "stat": "mean"})
            self._selection.set(answer.selection_seconds, tags=tags)
        if answer.staleness_at_selection_mean is not None:
            self._staleness.set(answer.staleness_at_selection_mean, tags={**tags, "stat": "mean"})
            self._staleness.set(answer.staleness_at_selection_max, tags={**tags, "stat": "max"})
        if answer.rule is not None:
            self._hard_share.set(answer.hard_share or 0.0, tags={**tags, "rule": answer.rule})
        similarity = answer.negative_similarity
        if similarity is not None and similarity == similarity:  # NaN: fewer than two known classes
            self._negative_similarity.set(similarity, tags=tags)

    def observe_eval(self, recall: dict[int, float]) -> None:
        for k, value in recall.items():
            self._recall.set(value, tags={**self._tags, "k": str(k)})

    def observe_mining_skipped_saves(self, count: int) -> None:
        if count > 0:
            self._skipped_saves.inc(count, tags=self._tags)
