"""Prometheus metrics of one API process (prometheus-client), served at GET /metrics.

Counters and histograms move when the change feed sees a prediction reach its final state, so they
count every prediction once per API process whichever worker ran it. Queue depth and the workers'
state are read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from vace.server.store import FAILED, PROCESSING, QUEUED, TERMINAL, Prediction

EXPOSITION_TYPES = ("text/plain", "application/openmetrics-text")  # what exposition() answers (+ parameters)
INPUT_FETCH = "input_fetch"  # metrics["error_kind"] of a prediction whose input could not be fetched
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
PREDICT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80)


@dataclass
class WorkerState:
    """One worker (a GPU, or a sequence-parallel group of them) as the metrics see it."""

    name: str
    devices: list[str]
    up: bool
    busy: bool


QueueCounts = Callable[[], dict[str, int]]
WorkerStates = Callable[[], list[WorkerState]]


class _LiveCollector(Collector):
    """Queue depth and worker gauges, read at scrape time."""

    def __init__(self, queue_counts: QueueCounts, workers: WorkerStates):
        self.queue_counts = queue_counts
        self.workers = workers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("vace_queue_depth", "Predictions waiting or running, by state", labels=["state"])
        counts = self.queue_counts()
        for state in (QUEUED, PROCESSING):
            depth.add_metric([state], counts.get(state, 0))
        yield depth
        up = GaugeMetricFamily("vace_worker_up", "1 while the worker is loaded and taking jobs",
                               labels=["worker", "device"])
        busy = GaugeMetricFamily("vace_worker_busy", "1 while the worker runs a prediction",
                                 labels=["worker", "device"])
        for worker in self.workers():
            for device in worker.devices:
                up.add_metric([worker.name, device], 1.0 if worker.up else 0.0)
                busy.add_metric([worker.name, device], 1.0 if worker.busy else 0.0)
        yield up
        yield busy


class ServerMetrics:
    """The registry of one API process and the updates the service and the workers' results feed it."""

    def __init__(self, queue_counts: QueueCounts, workers: WorkerStates):
        self.registry = CollectorRegistry()
        r = self.registry
        self.predictions = Counter("vace_predictions", "Predictions that reached a final state",
                                   ["endpoint", "outcome"], registry=r)
        self.queue_wait = Histogram("vace_queue_wait_seconds", "Time from submission until a worker started it",
                                    ["endpoint"], buckets=WAIT_BUCKETS, registry=r)
        self.predict_time = Histogram("vace_predict_seconds", "Time a worker spent on a prediction",
                                      ["endpoint"], buckets=PREDICT_BUCKETS, registry=r)
        self.step_time = Histogram("vace_denoising_step_seconds", "Duration of one denoising step",
                                   buckets=STEP_BUCKETS, registry=r)
        self.gpu_seconds = Counter("vace_gpu_seconds", "Device seconds held by predictions (time x devices)",
                                   registry=r)
        self.webhooks = Counter("vace_webhook_deliveries", "Webhook deliveries by final result "
                                "(delivered, refused by the receiver, gave up after retries, not sent)",
                                ["outcome"], registry=r)
        self.webhook_failed_attempts = Counter("vace_webhook_failed_attempts", "Webhook POSTs that failed (no "
                                               "answer or an error status), retried or not", registry=r)
        self.fetch_failures = Counter("vace_input_fetch_failures", "Predictions failed because an input URL "
                                      "could not be fetched", registry=r)
        r.register(_LiveCollector(queue_counts, workers))

    def observe(self, previous: Prediction | None, current: Prediction) -> None:
        """A change the feed saw; counts a prediction once, when it first shows a final state."""
        if current.status not in TERMINAL or (previous is not None and previous.status in TERMINAL):
            return
        endpoint = current.endpoint
        self.predictions.labels(endpoint, current.status).inc()
        if current.started_at is not None:
            self.queue_wait.labels(endpoint).observe(max(0.0, current.started_at - current.created_at))
        metrics = current.metrics or {}
        if metrics.get("predict_time") is not None and current.started_at is not None:
            self.predict_time.labels(endpoint).observe(float(metrics["predict_time"]))
        for seconds in metrics.get("step_seconds") or ():
            self.step_time.observe(float(seconds))
        if metrics.get("gpu_seconds"):
            self.gpu_seconds.inc(float(metrics["gpu_seconds"]))
        if current.status == FAILED and metrics.get("error_kind") == INPUT_FETCH:
            self.fetch_failures.inc()

    def webhook_delivered(self, outcome: str, failed_attempts: int) -> None:
        """One webhook's end: outcome delivered | refused | gave_up | not_sent."""
        self.webhooks.labels(outcome).inc()
        if failed_attempts:
            self.webhook_failed_attempts.inc(failed_attempts)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type in the format the scraper's Accept header asks for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
