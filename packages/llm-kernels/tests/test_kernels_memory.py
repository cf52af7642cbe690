"""llm_kernels.huge_pages: a tensor's copy on 2 MiB pages, checked against the kernel's own
account of the mapping (/proc/self/smaps)."""

from __future__ import annotations

import io
import re

import pytest
import torch
from llm_kernels import huge_pages, on_huge_pages
from llm_kernels.memory import HUGE_PAGE, huge_pages_available

needs_thp = pytest.mark.skipif(
    not huge_pages_available(), reason="this OS gives no transparent huge pages"
)


def anon_huge_kib(address: int) -> int:
    """AnonHugePages of the mapping holding ``address``, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if head:
                inside = int(head[1], 16) <= address < int(head[2], 16)
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@needs_thp
def test_the_copy_is_equal_and_on_huge_pages():
    torch.manual_seed(0)
    t = torch.randn(1500, 1024)  # 6 MB: two whole 2 MiB pages and a tail
    h = huge_pages(t)
    assert h is not t and torch.equal(h, t) and h.is_contiguous() and h.dtype == t.dtype
    assert h.data_ptr() % HUGE_PAGE == 0
    assert h.untyped_storage().nbytes() == t.numel() * 4  # only its own bytes
    assert on_huge_pages(h) and on_huge_pages(h[10:]) and not on_huge_pages(t)
    assert anon_huge_kib(h.data_ptr()) >= 2 * HUGE_PAGE // 1024
    assert huge_pages(h) is h  # already there: no second copy
    buffer = io.BytesIO()
    torch.save(h, buffer)
    assert len(buffer.getvalue()) < t.numel() * 4 + 4096  # saves the tensor, nothing around it
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), t)


@needs_thp
def test_a_parameter_keeps_its_gradient_flag_and_stays_writable():
    p = torch.nn.Parameter(torch.ones(1024, 1024))
    p.data = huge_pages(p.detach())
    assert on_huge_pages(p) and p.requires_grad
    (p * 2).sum().backward()
    assert torch.equal(p.grad, torch.full((1024, 1024), 2.0))
    with torch.no_grad():
        p.add_(1)
    assert float(p.detach()[0, 0]) == 2.0
    h = huge_pages(torch.zeros(1024, 1024, requires_grad=True))
    assert h.requires_grad and h.is_leaf


def test_small_and_other_tensors_stay_as_they_are():
    small = torch.randn(100, 100)  # 40 KB: not a page's worth
    assert huge_pages(small) is small and not on_huge_pages(small)
    meta = torch.empty(2048, 2048, device="meta")
    assert huge_pages(meta) is meta


def test_without_huge_pages_the_tensor_is_returned(monkeypatch):
    from llm_kernels import memory

    monkeypatch.setattr(memory, "_THP_SETTING", memory.Path("/nonexistent/enabled"))
    t = torch.randn(1024, 1024)
    assert huge_pages(t) is t and not on_huge_pages(t)
