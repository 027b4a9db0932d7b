"""Prometheus metrics of a training worker, and the null sink used when metrics are off.

Names carry units; every series has the labels ``job`` and ``rank``:
- ``dml_dist_samples_per_second``: global samples per second of the last step;
- ``dml_dist_step_seconds``: wall time of the last step;
- ``dml_dist_loss``: global loss of the last step;
- ``dml_dist_steps_total``: steps done;
- ``dml_dist_mining_refresh_age_steps{stat="max"|"mean"}``: age of the class bank;
- ``dml_dist_mining_selection_seconds``: time the service took to pick the last batch;
- ``dml_dist_mining_fallbacks_total``: steps that fell back to random classes;
- ``dml_dist_eval_recall{k="1"...}``: the last held-out Recall@K.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class NullMetrics:
    """Accepts every observation and does nothing."""

    address: str | None = None

    def observe_step(self, loss: float, samples_per_second: float, step_seconds: float) -> None:
        pass

    def observe_mining(self, answer: dict[str, Any]) -> None:
        pass

    def observe_eval(self, recall: dict[int, float]) -> None:
        pass


class PrometheusMetrics(NullMetrics):
    """Serves this worker's metrics over HTTP at ``host:port`` (port 0 = any free port)."""

    def __init__(self, job: str, rank: int, host: str, port: int):
        self.registry = CollectorRegistry()
        labels = {"job": job, "rank": str(rank)}
        names = ["job", "rank"]

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return Gauge(name, doc, [*names, *extra], registry=self.registry)

        self._samples = gauge("dml_dist_samples_per_second", "Global samples per second of the last step").labels(
            **labels
        )
        self._step = gauge("dml_dist_step_seconds", "Wall time of the last step").labels(**labels)
        self._loss = gauge("dml_dist_loss", "Global loss of the last step").labels(**labels)
        self._age = gauge("dml_dist_mining_refresh_age_steps", "Steps since class embeddings were refreshed", ("stat",))
        self._age_max = self._age.labels(**labels, stat="max")
        self._age_mean = self._age.labels(**labels, stat="mean")
        self._selection = gauge("dml_dist_mining_selection_seconds", "Time to select the last batch's classes").labels(
            **labels
        )
        self._recall = gauge("dml_dist_eval_recall", "Held-out Recall@K", ("k",))
        self._labels = labels
        self._steps = Counter("dml_dist_steps", "Training steps done", names, registry=self.registry).labels(**labels)
        self._fallbacks = Counter(
            "dml_dist_mining_fallbacks",
            "Steps that used random classes because the service did not answer",
            names,
            registry=self.registry,
        ).labels(**labels)
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.server = server
        self.address = f"http://{host}:{server.server_port}/metrics"

    def observe_step(self, loss: float, samples_per_second: float, step_seconds: float) -> None:
        self._loss.set(loss)
        self._samples.set(samples_per_second)
        self._step.set(step_seconds)
        self._steps.inc()

    def observe_mining(self, answer: dict[str, Any]) -> None:
        if answer.get("fallback"):
            self._fallbacks.inc()
        if "refresh_age_max" in answer:
            self._age_max.set(answer["refresh_age_max"])
            self._age_mean.set(answer["refresh_age_mean"])
            self._selection.set(answer["selection_seconds"])

    def observe_eval(self, recall: dict[int, float]) -> None:
        for k, value in recall.items():
            self._recall.labels(**self._labels, k=str(k)).set(value)

    def close(self) -> None:
        self.server.shutdown()
