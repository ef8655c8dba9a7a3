"""Pipeline observability: Prometheus metrics and live rolling figures.

Per-stage times, batch sizes, throughput and enqueue→committed latency, recorded once per
micro-batch. `/metrics` serves them in Prometheus text format; the rolling window feeds
`/readyz`, the stats API and the dashboard's KPI tiles.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("features", "predict", "reasons", "store", "cache")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PipelineMetrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, window_seconds: float = 10.0, latency_samples: int = 50_000) -> None:
        self.registry = CollectorRegistry()
        self.transactions = Counter(
            "fraudapp_transactions",
            "Transactions scored and committed, by decision.",
            ["decision"],
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "fraudapp_stage_seconds",
            "Time per micro-batch spent in each stage.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fraudapp_batch_size",
            "Transactions per micro-batch.",
            buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096, 8192),
            registry=self.registry,
        )
        self.latency = Histogram(
            "fraudapp_latency_seconds",
            "Enqueued → committed latency per transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.labels = Counter(
            "fraudapp_labels", "Label events stored, by source.", ["source"], registry=self.registry
        )
        self.write_retries = Counter(
            "fraudapp_write_retries", "Failed writes to PostgreSQL retried.", registry=self.registry
        )
        self.dead_letters = Counter(
            "fraudapp_dead_letter_transactions",
            "Transactions kept in the data dir's dead_letter folder: refused by the database,"
            " or failed to de-duplicate or score.",
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "fraudapp_cache_errors",
            "Redis commands that failed (fail open).",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "fraudapp_queue_depth", "Chunks waiting in the ingest queue.", registry=self.registry
        )
        self.model_version = Gauge(
            "fraudapp_model_info", "Serving model version.", ["version"], registry=self.registry
        )
        self._window = window_seconds
        self._commits: deque[tuple[float, int]] = deque()
        self._latencies = np.zeros(latency_samples, dtype=np.float32)
        self._latency_count = 0
        self.committed_total = 0

    def bind_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def set_model(self, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(version=version).set(1)

    def record_batch(
        self,
        *,
        timings_ms: dict[str, float],
        decisions: np.ndarray,
        latencies_s: np.ndarray,
        committed_at: float,
    ) -> None:
        n = len(decisions)
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage=stage).observe(ms / 1000.0)
        self.batch_size.observe(n)
        values, counts = np.unique(decisions, return_counts=True)
        for value, count in zip(values, counts, strict=True):
            self.transactions.labels(decision=value).inc(int(count))
        # A histogram observation per row would cost more than the row's scoring; a strided
        # sample keeps the distribution and the exact count is kept by the counter above.
        for value in latencies_s[:: max(1, n // 64)]:
            self.latency.observe(float(value))
        self._remember_latencies(latencies_s)
        self._commits.append((committed_at, n))
        self.committed_total += n
        horizon = committed_at - self._window
        while self._commits and self._commits[0][0] < horizon:
            self._commits.popleft()

    def _remember_latencies(self, latencies_s: np.ndarray) -> None:
        size = len(self._latencies)
        values = latencies_s[-size:]
        start = self._latency_count % size
        end = start + len(values)
        if end <= size:
            self._latencies[start:end] = values
        else:
            split = size - start
            self._latencies[start:] = values[:split]
            self._latencies[: end - size] = values[split:]
        self._latency_count += len(values)

    def reset_latencies(self) -> None:
        """Forget the latencies seen so far (a benchmark's warm-up)."""
        self._latency_count = 0

    def throughput_tps(self, now: float | None = None) -> float:
        now = now or time.time()
        horizon = now - self._window
        return sum(n for at, n in self._commits if at >= horizon) / self._window

    def latency_ms(self) -> dict[str, float | None]:
        filled = self._latencies[: min(self._latency_count, len(self._latencies))]
        if not len(filled):
            return {"p50": None, "p95": None, "p99": None}
        p50, p95, p99 = np.percentile(filled, [50, 95, 99]) * 1000.0
        return {
            "p50": round(float(p50), 2),
            "p95": round(float(p95), 2),
            "p99": round(float(p99), 2),
        }

    def stage_means_ms(self) -> dict[str, float]:
        means: dict[str, float] = {}
        for metric in self.stage_seconds.collect():
            sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
            counts = {
                s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")
            }
            for stage, total in sums.items():
                if counts.get(stage):
                    means[stage] = round(total / counts[stage] * 1000.0, 3)
        return means
