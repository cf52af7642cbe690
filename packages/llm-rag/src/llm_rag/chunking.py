"""Chunking text by characters or tokens, with overlap, cutting at paragraph and sentence ends.

Text is first cut into pieces at line, sentence and paragraph ends (pieces longer than a chunk
are cut again at spaces, then anywhere); pieces are packed greedily up to ``size``; when a chunk
is full it ends at the strongest boundary (paragraph > sentence > line > word) in its second
half. The next chunk starts at the earliest piece that keeps at most ``overlap`` of the previous
chunk. Sizes are in characters, or in tokens of the given tokenizer (summed over pieces). Every
chunk keeps its source and its character offsets: ``text == source_text[start:end]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from llm_rag.protocols import Tokenizer

PARAGRAPH, SENTENCE, LINE, WORD, ANYWHERE = 4, 3, 2, 1, 0  # strength of a cut
BOUNDARIES = (
    (PARAGRAPH, re.compile(r"\n[ \t]*\n\s*")),
    (SENTENCE, re.compile(r"[.!?][)\]\"']*\s+")),
    (LINE, re.compile(r"\n")),
)
SPACES = re.compile(r"\s+")
STREAM_WINDOW = 1 << 16  # characters chunked at a time from a stream (at least 32 chunks' worth)


@dataclass(frozen=True)
class Chunk:
    """A passage of a source: its text and character offsets ``[start, end)`` in the source."""

    text: str
    source: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"text": self.text, "source": self.source, "start": self.start, "end": self.end}

    @classmethod
    def from_json(cls, data: dict) -> Chunk:
        return cls(data["text"], data["source"], int(data["start"]), int(data["end"]))


class Chunker:
    """Cuts text into chunks of at most ``size`` characters, or tokens when given a ``tokenizer``.

    ``overlap`` (same unit, ``0 <= overlap < size``) is the most of a chunk's tail repeated at
    the head of the next. Raises ``ValueError`` on bad sizes.
    """

    def __init__(self, size: int = 400, overlap: int = 50, *, tokenizer: Tokenizer | None = None):
        if size < 1 or not 0 <= overlap < size:
            raise ValueError(
                f"chunks need size >= 1 and 0 <= overlap < size, got {size}, {overlap}"
            )
        self.size, self.overlap, self.tokenizer = size, overlap, tokenizer

    @property
    def unit(self) -> str:
        return "tokens" if self.tokenizer is not None else "chars"

    def measure(self, text: str) -> int:
        """Length of ``text`` in this chunker's unit."""
        return len(text) if self.tokenizer is None else len(self.tokenizer.encode(text))

    def chunk(self, text: str, source: str = "", offset: int = 0) -> list[Chunk]:
        """Chunks of ``text``, whose offsets count from ``offset``; whitespace-only parts are dropped."""
        chunks = []
        for start, end in self.spans(text):
            s, e = _strip(text, start, end)
            if s < e:
                chunks.append(Chunk(text[s:e], source, offset + s, offset + e))
        return chunks

    def chunk_stream(self, blocks: Iterable[str], source: str = "") -> Iterator[Chunk]:
        """Chunks of text arriving in blocks, holding a bounded window of it at a time.

        The window is cut as :meth:`chunk` would, all but its last chunk are yielded, and the
        next window starts where that last chunk starts, so chunks are whole and overlap as
        they would in the text read at once.
        """
        window = max(STREAM_WINDOW, 32 * self.size)
        buffer, base = "", 0
        for block in blocks:
            buffer += block
            if len(buffer) < 2 * window:
                continue
            spans = self.spans(buffer)
            for start, end in spans[:-1]:
                yield from self._emit(buffer, start, end, source, base)
            cut = spans[-1][0] if len(spans) > 1 else 0
            if cut == 0:  # one chunk covers the whole window: emit it rather than grow forever
                yield from self._emit(buffer, *spans[0], source, base)
                cut = spans[0][1]
            buffer, base = buffer[cut:], base + cut
        yield from self.chunk(buffer, source, base)

    def _emit(self, text: str, start: int, end: int, source: str, base: int) -> Iterator[Chunk]:
        s, e = _strip(text, start, end)
        if s < e:
            yield Chunk(text[s:e], source, base + s, base + e)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character spans of the chunks of ``text``, in order."""
        pieces = self._pieces(text)  # [(start, end, strength of the cut at end, measure)]
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(pieces):
            total, j = 0, i
            while j < len(pieces) and (j == i or total + pieces[j][3] <= self.size):
                total += pieces[j][3]
                j += 1
            last = j - 1  # pieces i..last fill the chunk
            if j < len(pieces):  # full: end at the strongest boundary in the second half
                best, best_strength, running = last, -1, 0
                for p in range(i, j):
                    running += pieces[p][3]
                    if running * 2 >= total and pieces[p][2] >= best_strength:
                        best, best_strength = p, pieces[p][2]
                last = best
            spans.append((pieces[i][0], pieces[last][1]))
            if last + 1 >= len(pieces):
                break
            nxt, kept = last + 1, 0
            while nxt - 1 > i and kept + pieces[nxt - 1][3] <= self.overlap:
                nxt -= 1
                kept += pieces[nxt][3]
            i = nxt
        return spans

    def _pieces(self, text: str) -> list[tuple[int, int, int, int]]:
        cuts = {len(text): PARAGRAPH}
        for strength, pattern in BOUNDARIES:
            for match in pattern.finditer(text):
                if match.end() < len(text):
                    cuts[match.end()] = max(cuts.get(match.end(), 0), strength)
        pieces, start = [], 0
        for end in sorted(cuts):
            if end > start:
                pieces.extend(self._fit(text, start, end, cuts[end]))
                start = end
        return pieces

    def _fit(
        self, text: str, start: int, end: int, strength: int
    ) -> list[tuple[int, int, int, int]]:
        """The piece ``text[start:end]``, cut at spaces and then anywhere until each part fits."""
        size = self.measure(text[start:end])
        if size <= self.size:
            return [(start, end, strength, size)]
        words = [m.end() for m in SPACES.finditer(text, start, end) if start < m.end() < end]
        if words:
            out, s = [], start
            for e in [*words, end]:
                out.extend(self._fit(text, s, e, WORD if e < end else strength))
                s = e
            return out
        out, s = [], start
        while s < end:  # one run with no space: the longest prefix that fits, again and again
            lo, hi = s + 1, end
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.measure(text[s:mid]) <= self.size:
                    lo = mid
                else:
                    hi = mid - 1
            out.append((s, lo, ANYWHERE if lo < end else strength, self.measure(text[s:lo])))
            s = lo
        return out


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
