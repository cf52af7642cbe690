"""Applying ranked BPE merges to one word, in HF tokenizers' order.

A merge table maps an adjacent pair of token ids to `(rank, merged_id)`. The word's lowest-rank
pair is merged first; among equal ranks the leftmost wins. Short words use a plain scan; long
ones (whitespace runs, SentencePiece text that is not split on spaces) a heap over a linked list,
which gives the same result in O(n log n).
"""

from __future__ import annotations

import heapq
import itertools

Merges = dict[tuple[int, int], tuple[int, int]]

LONG_WORD = 128  # symbols; above this the heap beats rescanning all pairs after each merge
_NO_MERGE = float("inf")


def merge_word(symbols: list[int], merges: Merges) -> list[int]:
    """Merge `symbols` (token ids, modified in place) until no adjacent pair is in `merges`."""
    if len(symbols) > LONG_WORD:
        return _merge_long(symbols, merges)
    get = merges.get
    # ranks[i] is the rank of the pair (symbols[i], symbols[i + 1]); min() and index() run in C.
    ranks = [get(pair, (_NO_MERGE,))[0] for pair in itertools.pairwise(symbols)]
    while ranks:
        best = min(ranks)
        if best == _NO_MERGE:
            break
        at = ranks.index(best)  # leftmost among equal ranks
        symbols[at : at + 2] = (merges[symbols[at], symbols[at + 1]][1],)
        del ranks[at]
        if at > 0:
            ranks[at - 1] = get((symbols[at - 1], symbols[at]), (_NO_MERGE,))[0]
        if at < len(ranks):
            ranks[at] = get((symbols[at], symbols[at + 1]), (_NO_MERGE,))[0]
    return symbols


def _merge_long(symbols: list[int], merges: Merges) -> list[int]:
    """`merge_word` for long inputs: a heap of candidate merges keyed by (rank, position)."""
    get = merges.get
    n = len(symbols)
    alive = list(symbols)  # alive[i] is the id at position i, or -1 once merged into its left
    next_at = [*range(1, n), -1]
    prev_at = [-1, *range(n - 1)]
    heap = []
    for at in range(n - 1):
        merge = get((symbols[at], symbols[at + 1]))
        if merge is not None:
            heap.append((merge[0], at, symbols[at], symbols[at + 1], merge[1]))
    heapq.heapify(heap)
    while heap:
        _, at, left, right, merged = heapq.heappop(heap)
        right_at = next_at[at]
        if alive[at] != left or right_at < 0 or alive[right_at] != right:
            continue  # stale: one side was merged away since this candidate was pushed
        alive[at] = merged
        alive[right_at] = -1
        after = next_at[right_at]
        next_at[at] = after
        if after >= 0:
            prev_at[after] = at
            merge = get((merged, alive[after]))
            if merge is not None:
                heapq.heappush(heap, (merge[0], at, merged, alive[after], merge[1]))
        before = prev_at[at]
        if before >= 0:
            merge = get((alive[before], merged))
            if merge is not None:
                heapq.heappush(heap, (merge[0], before, alive[before], merged, merge[1]))
    return [token for token in alive if token >= 0]
