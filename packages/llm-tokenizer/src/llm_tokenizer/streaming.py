"""Incremental decoding for streaming: text comes out only once its UTF-8 is complete."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llm_tokenizer.tokenizer import Tokenizer


class IncrementalDecoder:
    """Turns ids, fed in any batches, into text pieces whose concatenation is `decode(all ids)`.

    A token may end inside a multi-byte character (byte-level BPE, byte fallback); its bytes
    wait until the character completes. `finish()` flushes what remains (as U+FFFD if the
    stream ended mid-character).
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True  # a SentencePiece stream still owes the strip of its prefix space

    def add(self, ids: Iterable[int]) -> str:
        """Feed ids; return the newly completed text (maybe ""). Raises TokenizerError on a bad id."""
        data = self.tokenizer.token_bytes_of(ids, skip_special_tokens=self.skip_special_tokens)
        if self._at_start and data:
            self._at_start = False
            if self.tokenizer.strips_leading_space and data.startswith(b" "):
                data = data[1:]
        return self._utf8.decode(data)

    def finish(self) -> str:
        """Flush bytes of an unfinished character as U+FFFD; the decoder is then reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._at_start = True
        return text
