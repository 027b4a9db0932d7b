"""Prometheus metrics of a training worker, and the null sink used when metrics are off.

Names carry units; every series has the labels ``job`` and ``rank``:
- ``dml_dist_samples_per_second``: global samples per second of the last step;
- ``dml_dist_step_seconds``: wall time of the last step;
- ``dml_dist_step_phase_seconds{phase=...}``: the last step's time in data, forward,
  all_gather, loss, backward and optimizer;
- ``dml_dist_loss``: global loss of the last step;
- ``dml_dist_steps_total``: steps done;
- ``dml_dist_memory_peak_rss_bytes``: the worker's peak resident memory;
- ``dml_dist_memory_gpu_peak_bytes``: peak GPU memory allocated by torch (GPU workers only);
- ``dml_dist_mining_refresh_age_steps{stat="max"|"mean"}``: age of the class bank;
- ``dml_dist_mining_selection_seconds``: time the service took to pick the last batch;
- ``dml_dist_mining_fallbacks_total``: steps that fell back to random classes (service slow,
  dead, or not warm yet);
- ``dml_dist_mining_negative_similarity``: how hard the last batch is: mean over its classes of
  the cosine similarity (by the class bank) to the closest other class of the batch;
- ``dml_dist_eval_recall{k="1"...}``: the last held-out Recall@K;
- ``dml_dist_data_skipped_samples_total``: training samples skipped as bad data.

Each worker registers its endpoint as a Prometheus file_sd target in ``metrics.targets_dir``
(removed by ``close``), which ``cluster/prometheus/prometheus.yml`` watches.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class NullMetrics:
    """Accepts every observation and does nothing."""

    address: str | None = None

    def observe_step(
        self, loss: float, samples_per_second: float, step_seconds: float, phases: dict[str, float] | None = None
    ) -> None:
        pass

    def observe_mining(self, answer: dict[str, Any]) -> None:
        pass

    def observe_eval(self, recall: dict[int, float]) -> None:
        pass

    def observe_data_skips(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


class PrometheusMetrics(NullMetrics):
    """Serves this worker's metrics over HTTP at ``host:port`` (port 0 = any free port)."""

    def __init__(self, job: str, rank: int, host: str, port: int, targets_dir: str | None = None):
        self.registry = CollectorRegistry()
        labels = {"job": job, "rank": str(rank)}
        names = ["job", "rank"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, [*names, *extra], registry=self.registry)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, names, registry=self.registry).labels(**labels)

        self._labels = labels
        self._samples = gauge("dml_dist_samples_per_second", "Global samples per second of the last step").labels(
            **labels
        )
        self._step = gauge("dml_dist_step_seconds", "Wall time of the last step").labels(**labels)
        self._phase = gauge("dml_dist_step_phase_seconds", "Time of the last step spent in each phase", ("phase",))
        self._loss = gauge("dml_dist_loss", "Global loss of the last step").labels(**labels)
        self._rss = gauge("dml_dist_memory_peak_rss_bytes", "Peak resident memory of this worker").labels(**labels)
        self._gpu_memory = gauge("dml_dist_memory_gpu_peak_bytes", "Peak GPU memory allocated by torch")
        self._age = gauge("dml_dist_mining_refresh_age_steps", "Steps since class embeddings were refreshed", ("stat",))
        self._age_max = self._age.labels(**labels, stat="max")
        self._age_mean = self._age.labels(**labels, stat="mean")
        self._selection = gauge("dml_dist_mining_selection_seconds", "Time to select the last batch's classes").labels(
            **labels
        )
        self._negative_similarity = gauge(
            "dml_dist_mining_negative_similarity",
            "Mean cosine similarity of the last batch's classes to their closest other class",
        ).labels(**labels)
        self._recall = gauge("dml_dist_eval_recall", "Held-out Recall@K", ("k",))
        self._steps = counter("dml_dist_steps", "Training steps done")
        self._fallbacks = counter(
            "dml_dist_mining_fallbacks", "Steps that used random classes (service slow, dead or not warm)"
        )
        self._data_skips = counter(
            "dml_dist_data_skipped_samples",
            "Training samples skipped as bad data (corrupt tar, undecodable image, bad class field)",
        )
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        self.address = f"http://{host}:{server.server_port}/metrics"
        self.target_file = _write_target(targets_dir, job, rank, f"{host}:{server.server_port}")

    def observe_step(
        self, loss: float, samples_per_second: float, step_seconds: float, phases: dict[str, float] | None = None
    ) -> None:
        self._loss.set(loss)
        self._samples.set(samples_per_second)
        self._step.set(step_seconds)
        self._steps.inc()
        for phase, seconds in (phases or {}).items():
            self._phase.labels(**self._labels, phase=phase).set(seconds)
        self._rss.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if torch.cuda.is_available():
            self._gpu_memory.labels(**self._labels).set(torch.cuda.max_memory_allocated())

    def observe_mining(self, answer: dict[str, Any]) -> None:
        if answer.get("fallback"):
            self._fallbacks.inc()
        if "refresh_age_max" in answer:
            self._age_max.set(answer["refresh_age_max"])
            self._age_mean.set(answer["refresh_age_mean"])
            self._selection.set(answer["selection_seconds"])
        similarity = answer.get("negative_similarity")
        if similarity is not None and similarity == similarity:  # NaN: fewer than two known classes
            self._negative_similarity.set(similarity)

    def observe_eval(self, recall: dict[int, float]) -> None:
        for k, value in recall.items():
            self._recall.labels(**self._labels, k=str(k)).set(value)

    def observe_data_skips(self, count: int) -> None:
        if count > 0:
            self._data_skips.inc(count)

    def close(self) -> None:
        self.server.shutdown()
        if self.target_file is not None:
            self.target_file.unlink(missing_ok=True)


def _write_target(targets_dir: str | None, job: str, rank: int, address: str) -> Path | None:
    """Register the endpoint as a Prometheus file_sd target (written atomically)."""
    if not targets_dir:
        return None
    directory = Path(targets_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job}-rank{rank}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([{"targets": [address], "labels": {"dml_dist_rank": str(rank)}}]))
    os.replace(tmp, path)
    return path
