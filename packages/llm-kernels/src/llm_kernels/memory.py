"""Weights on 2 MiB pages: :func:`huge_pages` and :func:`on_huge_pages`.

Decode reads every weight matrix once per token, front to back. Through 4 KiB pages that is a
TLB miss every 4 KiB, and the page walks compete with the stream for the memory; on 2 MiB pages
(Linux's transparent huge pages) there is one every 2 MiB. The llama-125m shape's 49 float32
products of one decode step, through :func:`llm_kernels.linear` on a 2-core Xeon VM, ran
4.6-12.5% faster (three runs of eight interleaved rounds; docs/benchmarks.md).

Linux gives huge pages to a large allocation either always or only where the program asks
(``madvise``, the common default, the setting in ``/sys/kernel/mm/transparent_hugepage``);
torch's allocator does not ask unless ``THP_MEM_ALLOC_ENABLE`` is set before its first
allocation. :func:`huge_pages` copies a tensor into an anonymous mapping that asks for them,
aligned to 2 MiB, its storage exactly the tensor's bytes (``torch.save`` and ``state_dict``
see nothing else). Elsewhere (another OS, huge pages off, a small or non-CPU tensor) it returns
the tensor as it is.
"""

from __future__ import annotations

import mmap
import weakref
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20  # bytes: x86-64's and arm64's transparent huge page
_THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# storage address -> the mapping behind it (weak: a freed mapping's address may be reused)
_MAPPINGS: dict[int, weakref.ref[mmap.mmap]] = {}


def huge_pages_available() -> bool:
    """Whether this OS gives huge pages to a mapping that asks (Linux, THP not ``never``)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = _THP_SETTING.read_text()
    except OSError:
        return False
    return "[never]" not in setting


def on_huge_pages(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is one that :func:`huge_pages` made."""
    ref = _MAPPINGS.get(t.untyped_storage().data_ptr())
    return ref is not None and ref() is not None


def huge_pages(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` in memory that asks the OS for 2 MiB pages, or ``t`` itself
    where that cannot help: a tensor smaller than one such page, not on the CPU, already on
    them, or an OS without them (see the module docstring). Values, shape, dtype and
    ``requires_grad`` are those of ``t``; the copy's storage holds only its own bytes."""
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < HUGE_PAGE or on_huge_pages(t):
        return t
    if not huge_pages_available():
        return t
    for address in [a for a, r in _MAPPINGS.items() if r() is None]:
        del _MAPPINGS[address]
    # private and anonymous (a shared one is shmem, under other rules); nothing resident yet
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()
    offset = -base % HUGE_PAGE  # the first 2 MiB boundary inside the mapping
    whole = nbytes // HUGE_PAGE * HUGE_PAGE  # only whole pages: the tail stays on small ones
    mapping.madvise(mmap.MADV_HUGEPAGE, offset, whole)
    out = torch.frombuffer(mapping, dtype=t.dtype, count=t.numel(), offset=offset)
    out = out.view(t.shape)
    with torch.no_grad():
        out.copy_(t)  # the first touch: the OS backs the pages now
    _MAPPINGS[out.untyped_storage().data_ptr()] = weakref.ref(mapping)
    return out.requires_grad_(t.requires_grad)
