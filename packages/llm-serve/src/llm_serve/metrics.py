"""Prometheus text exposition of the server's and the engine's counters (no client library)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import fields

from llm_infer.engine import EngineStats

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds

ENGINE_METRICS = {  # EngineStats field -> (metric name, type, help)
    "queue_depth": ("llm_queue_depth", "gauge", "Requests waiting for a batch slot."),
    "running": ("llm_running_requests", "gauge", "Requests in the running batch."),
    "finished": ("llm_engine_finished_total", "counter", "Requests finished by the engine."),
    "cancelled": ("llm_engine_cancelled_total", "counter", "Requests cancelled (disconnects)."),
    "failed": ("llm_engine_failed_total", "counter", "Requests ended by an engine error."),
    "prompt_tokens": ("llm_prompt_tokens_total", "counter", "Prompt tokens admitted."),
    "generated_tokens": ("llm_generation_tokens_total", "counter", "Tokens generated."),
    "tokens_per_s": (
        "llm_generation_tokens_per_second",
        "gauge",
        "Generated tokens per busy second.",
    ),
    "mean_time_to_first_token_s": (
        "llm_engine_mean_time_to_first_token_seconds",
        "gauge",
        "Mean time from submission to the first token, in the engine.",
    ),
    "prefix_hits": (
        "llm_prefix_cache_hits_total",
        "counter",
        "Requests that reused cached blocks.",
    ),
    "prefix_cached_tokens": (
        "llm_prefix_cache_tokens_total",
        "counter",
        "Prompt tokens served from the prefix cache.",
    ),
    "blocks_in_use": ("llm_kv_blocks_in_use", "gauge", "KV cache blocks in use."),
    "blocks_total": ("llm_kv_blocks_total", "gauge", "KV cache blocks in all."),
    "steps": ("llm_engine_steps_total", "counter", "Engine steps run."),
}


class Metrics:
    """Request counts by route and status, and a histogram of streamed time to first token.

    Safe to update from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.ttft_buckets = [0] * len(TTFT_BUCKETS)
        self.ttft_count = 0
        self.ttft_sum = 0.0

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[route, status] += 1

    def observe_ttft(self, seconds: float) -> None:
        """Record one request's time from arrival to its first streamed token."""
        with self._lock:
            self.ttft_count += 1
            self.ttft_sum += seconds
            for i, bound in enumerate(TTFT_BUCKETS):
                if seconds <= bound:
                    self.ttft_buckets[i] += 1

    def render(self, stats: EngineStats | None) -> str:
        """The Prometheus text format (version 0.0.4); engine metrics only while it runs."""
        lines = [
            "# HELP llm_requests_total HTTP requests by route and status.",
            "# TYPE llm_requests_total counter",
        ]
        with self._lock:
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'llm_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP llm_time_to_first_token_seconds Arrival to first streamed token.",
                "# TYPE llm_time_to_first_token_seconds histogram",
            ]
            for bound, n in zip(TTFT_BUCKETS, self.ttft_buckets, strict=True):
                lines.append(f'llm_time_to_first_token_seconds_bucket{{le="{bound}"}} {n}')
            lines += [
                f'llm_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_count}',
                f"llm_time_to_first_token_seconds_sum {self.ttft_sum}",
                f"llm_time_to_first_token_seconds_count {self.ttft_count}",
            ]
        if stats is not None:
            present = {f.name for f in fields(stats)}
            for key, (name, kind, help_text) in ENGINE_METRICS.items():
                if key in present:
                    lines += [
                        f"# HELP {name} {help_text}",
                        f"# TYPE {name} {kind}",
                        f"{name} {getattr(stats, key)}",
                    ]
        return "\n".join(lines) + "\n"
