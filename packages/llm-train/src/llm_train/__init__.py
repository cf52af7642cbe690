"""Training for llm: data preparation, loader, training loop, resume, distributed."""

from importlib.metadata import version as _version

from llm_train.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from llm_train.config import RunConfig
from llm_train.data import prepare, read_documents, train_tokenizer
from llm_train.errors import DataError, RunConfigError, TrainError
from llm_train.loader import BatchLoader, TokenShards
from llm_train.trainer import Trainer, TrainResult

__version__ = _version("llm-train")

__all__ = [
    "BatchLoader",
    "DataError",
    "RunConfig",
    "RunConfigError",
    "TokenShards",
    "TrainError",
    "TrainResult",
    "Trainer",
    "__version__",
    "latest_checkpoint",
    "load_trainer_state",
    "prepare",
    "read_documents",
    "save_checkpoint",
    "train_tokenizer",
]
