"""The server's Prometheus metrics, with ``prometheus_client``.

Per request (from the engine's :class:`~llm_infer.engine.RequestTiming`): histograms of the
time to first token and of the time per output token, counters of prompt, cached and
generated tokens and of finished requests by reason; per HTTP request: a counter by route and
status. At scrape time, the engine's state: queue depth, running requests and KV blocks
(gauges) and its own counters. Histograms and counters aggregate across replicas; no means or
rates are exported (Prometheus computes them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from llm_infer.engine import EngineStats, RequestTiming
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)  # seconds

ENGINE_GAUGES = {  # EngineStats field -> (metric name, help)
    "queue_depth": ("llm_queue_depth", "Requests waiting for a batch slot."),
    "running": ("llm_running_requests", "Requests in the running batch."),
    "blocks_in_use": ("llm_kv_blocks_in_use", "KV cache blocks in use."),
    "blocks_total": ("llm_kv_blocks_total", "KV cache blocks in all."),
}
ENGINE_COUNTERS = {  # EngineStats field -> (metric name without _total, help)
    "failed": ("llm_engine_failed", "Requests ended by an engine error."),
    "cancelled": ("llm_engine_cancelled", "Requests cancelled (disconnects)."),
    "prefix_hits": ("llm_prefix_cache_hits", "Requests that reused cached blocks."),
    "steps": ("llm_engine_steps", "Engine steps run."),
}


class _EngineCollector(Collector):
    """The engine's gauges and counters, read from ``stats()`` at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        if stats is None:
            return
        for key, (name, text) in ENGINE_GAUGES.items():
            yield GaugeMetricFamily(name, text, value=getattr(stats, key))
        for key, (name, text) in ENGINE_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=getattr(stats, key))


class Metrics:
    """The server's metrics in a registry of their own (one per app). Thread-safe."""

    def __init__(self, stats: Callable[[], EngineStats | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llm_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            "llm_time_to_first_token_seconds",
            "Time from a request's submission to its first token, in the engine.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "llm_time_per_output_token_seconds",
            "Mean time between a request's tokens after the first.",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens.", registry=r)
        self.cached_tokens = Counter(
            "llm_prefix_cache_tokens", "Prompt tokens served from the prefix cache.", registry=r
        )
        self.generated_tokens = Counter("llm_generation_tokens", "Tokens generated.", registry=r)
        self.finished = Counter(
            "llm_request_finished",
            "Requests finished, by finish reason.",
            ["finish_reason"],
            registry=r,
        )
        r.register(_EngineCollector(stats))

    def count_request(self, route: str, status: int) -> None:
        self.requests.labels(route=route, status=str(status)).inc()

    def observe(self, timing: RequestTiming) -> None:
        """Record one finished request (the engine's observer)."""
        if timing.time_to_first_token_s is not None:
            self.ttft.observe(timing.time_to_first_token_s)
        if timing.time_per_output_token_s is not None:
            self.tpot.observe(timing.time_per_output_token_s)
        self.prompt_tokens.inc(timing.prompt_tokens)
        self.cached_tokens.inc(timing.cached_tokens)
        self.generated_tokens.inc(timing.completion_tokens)
        self.finished.labels(finish_reason=timing.finish_reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
