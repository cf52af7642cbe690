"""Continuous batching: a pure scheduler, a model runner, and an async front end."""

from llm_infer.engine.engine import Engine, EngineStats, RequestHandle, RequestTiming
from llm_infer.engine.scheduler import Plan, Request, Scheduler

__all__ = [
    "Engine",
    "EngineStats",
    "Plan",
    "Request",
    "RequestHandle",
    "RequestTiming",
    "Scheduler",
]
