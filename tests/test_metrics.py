"""Prometheus metrics: what a scrape reports after predictions finish, parsed with prometheus-client's parser."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from vace.server.metrics import INPUT_FETCH, ServerMetrics, WorkerState
from vace.server.store import CANCELED, FAILED, PROCESSING, QUEUED, SUCCEEDED, Prediction


def _samples(metrics: ServerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _prediction(status: str, **values) -> Prediction:
    fields = {"id": "p1", "endpoint": "vace/tiny", "version": "", "dialect": "replicate", "model": "tiny",
              "input": {}, "request": {}, "created_at": 100.0, **values}
    return Prediction(status=status, **fields)


def test_a_scrape_reports_final_states_once_with_their_timings():
    workers = [WorkerState("worker-a", ["cuda:0", "cuda:1"], up=True, busy=True),
               WorkerState("worker-b", ["cuda:2"], up=False, busy=False)]
    metrics = ServerMetrics(lambda: {QUEUED: 3, PROCESSING: 1}, lambda: workers)
    running = _prediction(PROCESSING, started_at=102.0)
    done = dataclasses.replace(running, status=SUCCEEDED, metrics={
        "predict_time": 8.0, "gpu_seconds": 16.0, "step_seconds": [0.2, 0.3, 0.4]})
    metrics.observe(None, running)
    metrics.observe(running, done)
    metrics.observe(done, dataclasses.replace(done, rev=9))  # a later write to a finished one: not counted again
    fetch_failed = _prediction(FAILED, id="p2", endpoint="fal-ai/wan-vace-14b", started_at=100.5,
                               metrics={"predict_time": 0.5, "error_kind": INPUT_FETCH, "gpu_seconds": 0.5})
    metrics.observe(None, fetch_failed)
    metrics.observe(None, _prediction(CANCELED, id="p3"))  # canceled while queued: no wait, no run time
    metrics.webhook_delivered("delivered", failed_attempts=2)
    metrics.webhook_delivered("gave_up", failed_attempts=6)
    s = _samples(metrics)
    assert s[("vace_predictions_total", (("endpoint", "vace/tiny"), ("outcome", "succeeded")))] == 1
    assert s[("vace_predictions_total", (("endpoint", "fal-ai/wan-vace-14b"), ("outcome", "failed")))] == 1
    assert s[("vace_predictions_total", (("endpoint", "vace/tiny"), ("outcome", "canceled")))] == 1
    assert s[("vace_queue_wait_seconds_count", (("endpoint", "vace/tiny"),))] == 1
    assert s[("vace_queue_wait_seconds_sum", (("endpoint", "vace/tiny"),))] == 2.0
    assert s[("vace_queue_wait_seconds_bucket", (("endpoint", "vace/tiny"), ("le", "2.5")))] == 1
    assert s[("vace_queue_wait_seconds_bucket", (("endpoint", "vace/tiny"), ("le", "1.0")))] == 0
    assert s[("vace_predict_seconds_sum", (("endpoint", "vace/tiny"),))] == 8.0
    assert s[("vace_predict_seconds_count", (("endpoint", "fal-ai/wan-vace-14b"),))] == 1
    assert s[("vace_denoising_step_seconds_count", ())] == 3
    assert abs(s[("vace_denoising_step_seconds_sum", ())] - 0.9) < 1e-9
    assert s[("vace_gpu_seconds_total", ())] == 16.5
    assert s[("vace_input_fetch_failures_total", ())] == 1
    assert s[("vace_webhook_deliveries_total", (("outcome", "delivered"),))] == 1
    assert s[("vace_webhook_deliveries_total", (("outcome", "gave_up"),))] == 1
    assert s[("vace_webhook_failed_attempts_total", ())] == 8
    assert s[("vace_queue_depth", (("state", "queued"),))] == 3
    assert s[("vace_queue_depth", (("state", "processing"),))] == 1
    assert s[("vace_worker_up", (("device", "cuda:1"), ("worker", "worker-a")))] == 1
    assert s[("vace_worker_busy", (("device", "cuda:0"), ("worker", "worker-a")))] == 1
    assert s[("vace_worker_up", (("device", "cuda:2"), ("worker", "worker-b")))] == 0


def test_each_server_has_its_own_registry():
    first, second = (ServerMetrics(dict, list) for _ in range(2))
    first.observe(None, _prediction(CANCELED))
    assert ("vace_predictions_total", (("endpoint", "vace/tiny"), ("outcome", "canceled"))) in _samples(first)
    assert not [k for k in _samples(second) if k[0] == "vace_predictions_total"]
    assert _samples(second)[("vace_queue_depth", (("state", "queued"),))] == 0


def test_the_grafana_dashboard_queries_only_metrics_a_scrape_has():
    import json
    import re
    from importlib.resources import files

    dashboard = json.loads((files("vace.server.web") / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bvace_\w+", e)}
    metrics = ServerMetrics(dict, lambda: [WorkerState("w", ["cpu"], up=True, busy=False)])
    metrics.observe(None, _prediction(SUCCEEDED, started_at=101.0, metrics={
        "predict_time": 1.0, "step_seconds": [0.1], "gpu_seconds": 1.0}))
    metrics.webhook_delivered("delivered", failed_attempts=1)
    metrics.fetch_failures.inc()
    scraped = {name for name, _ in _samples(metrics)}
    assert used and used <= scraped, used - scraped
