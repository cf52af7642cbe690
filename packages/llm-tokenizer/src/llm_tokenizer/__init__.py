"""llm-tokenizer: byte-level and SentencePiece-style BPE, HF and GGUF vocabularies, chat templates. No torch."""

from importlib.metadata import version as _version

from llm_tokenizer.errors import DisallowedSpecialTokenError, TokenizerError, TokenizerWarning
from llm_tokenizer.patterns import PATTERNS, bytes_to_unicode
from llm_tokenizer.pretokenizers import Split
from llm_tokenizer.streaming import IncrementalDecoder
from llm_tokenizer.tokenizer import Tokenizer

__version__ = _version("llm-tokenizer")

__all__ = [
    "PATTERNS",
    "DisallowedSpecialTokenError",
    "IncrementalDecoder",
    "Split",
    "Tokenizer",
    "TokenizerError",
    "TokenizerWarning",
    "__version__",
    "bytes_to_unicode",
]
