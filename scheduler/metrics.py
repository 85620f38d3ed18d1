"""Prometheus metrics, one registry per service.

Counters and histograms are fed as things happen; the per-state and
per-slot gauges are read from the database when ``/metrics`` is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

PREFIX = "amc_scheduler"
_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_RUN_BUCKETS = (60, 300, 600, 900, 1200, 1800, 2700, 3600, 7200, 14400, 21600, 43200)
_CALL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.amc_requests = Counter(
            f"{PREFIX}_amc_requests",
            "AMC API requests by call and outcome.",
            ["call", "outcome"],
            registry=self.registry,
        )
        self.amc_request_seconds = Histogram(
            f"{PREFIX}_amc_request_seconds",
            "Time per AMC API request.",
            ["call"],
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        self.limit_errors = Counter(
            f"{PREFIX}_limit_errors",
            "Creates AMC refused for a parallel limit, a quota or a throttle.",
            ["account", "instance", "kind"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "From a run being queued to its execution being created.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.start_latency = Histogram(
            f"{PREFIX}_submit_to_start_seconds",
            "From an execution's creation to AMC reporting it RUNNING.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            f"{PREFIX}_run_duration_seconds",
            "How long finished executions held their slot, by job.",
            ["job"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.runs_finished = Counter(
            f"{PREFIX}_runs_finished",
            "Runs that reached a terminal state, by job and state.",
            ["job", "state"],
            registry=self.registry,
        )
        self.submissions = Counter(
            f"{PREFIX}_submissions",
            "Create calls by outcome (created, adopted, limit, throttled, transient,"
            " rejected).",
            ["outcome"],
            registry=self.registry,
        )
        self.loop_failures = Counter(
            f"{PREFIX}_loop_failures",
            "Failed iterations of the service's loops, by loop.",
            ["loop"],
            registry=self.registry,
        )

    def observe_amc(self, call: str, outcome: str, seconds: float) -> None:
        self.amc_requests.labels(call, outcome).inc()
        self.amc_request_seconds.labels(call).observe(seconds)
