"""Prometheus metrics of the service (names prefixed `humanaes_`).

One worker: the metrics live in the app's own registry. Several workers (`--workers > 1`):
prometheus-client's multiprocess mode, switched on by PROMETHEUS_MULTIPROC_DIR in the
environment before the workers start; each worker writes its values to files there and
`/metrics` sums them over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ServiceMetrics:
    """The service's counters, gauges and histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode values go to files whatever the registry; collection reads them.
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = self.registry
        self.requests = Counter("humanaes_requests", "HTTP requests answered, by status code", ["status"], registry=reg)
        self.queue_depth = Gauge(
            "humanaes_queue_depth", "Images waiting for the model or in it", registry=reg, multiprocess_mode="livesum"
        )
        self.admitted = Gauge(
            "humanaes_requests_in_progress", "Scoring requests admitted (reading, queued or scored)",
            registry=reg, multiprocess_mode="livesum",
        )
        self.batch_size = Histogram("humanaes_batch_size", "Images per model batch", buckets=BATCH_BUCKETS, registry=reg)
        self.batch_seconds = Histogram(
            "humanaes_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.latency = Histogram(
            "humanaes_request_latency_seconds", "Time to answer a scoring request, by status code", ["status"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.images = Counter("humanaes_images_scored", "Images scored, by outcome (ok or error)", ["outcome"], registry=reg)

    def exposition(self) -> bytes:
        """The text format of all metrics (summed over workers in multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)
