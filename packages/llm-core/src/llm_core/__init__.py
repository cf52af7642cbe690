"""llm-core: the model configuration, the Transformer, its KV caches and its checkpoints."""

from importlib.metadata import version as _version

from llm_core.cache import KVCache, StaticKVCache
from llm_core.checkpoint import load_model, save_model
from llm_core.config import ModelConfig
from llm_core.errors import CacheFullError, CheckpointError, ConfigError, LLMCoreError
from llm_core.estimate import MemoryEstimate, estimate_memory
from llm_core.model import Transformer

__version__ = _version("llm-core")

__all__ = [
    "CacheFullError",
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "LLMCoreError",
    "MemoryEstimate",
    "ModelConfig",
    "StaticKVCache",
    "Transformer",
    "__version__",
    "estimate_memory",
    "load_model",
    "save_model",
]
