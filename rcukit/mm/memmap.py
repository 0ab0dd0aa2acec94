"""The memory map of the one zone: addresses of a page and the state of its ``struct page``.

What ``include/asm-generic/memory_model.h`` and ``arch/x86/include/asm/page.h`` give the kernel
(``page_address``, ``virt_to_pfn``, ``pfn_to_page``) and what ``struct page``'s flags and
``page->private`` tell ``free_pages_prepare()`` and ``bad_page()`` in mm/page_alloc.c: whether a
page is free, allocated (with its order and the pcp list it came from), a tail of a higher-order
block, a slab page (``PG_slab``), or held by the "other users" reclaim takes from. One byte per
page (``pstate``), so bad frees are caught for a byte per page.
"""

from __future__ import annotations

from collections.abc import Iterable

from rcukit.errors import MemoryDebugError, PageAllocError
from rcukit.mm.vmalloc import is_vmalloc_addr
from rcukit.mm.zone import MAX_ORDER

#: x86-64 direct map base (``__PAGE_OFFSET_BASE_L4``): ``page_address(pfn) = PAGE_OFFSET + pfn*PS``.
PAGE_OFFSET = 0xFFFF888000000000
#: x86-64 ``vmemmap`` base: ``struct page`` addresses printed by the page tracepoints.
VMEMMAP_START = 0xFFFFEA0000000000
#: ZONE_NORMAL starts at 4 GiB on x86-64 machines with more than 4 GiB.
ZONE_NORMAL_START_PFN = 0x100000

# Page state bytes (``pstate``): an allocated head is ``(migratetype + 1) << 4 | order``.
PS_FREE = 0
PS_TAIL = 0x40
PS_SLAB = 0x80
PS_OTHER = 0xFF

#: state byte -> migratetype for an allocated order-0 non-slab page, else 0xFF.
ORDER0_MT = bytes((v >> 4) - 1 if v in (0x10, 0x20, 0x30) else 0xFF for v in range(256))


def page_struct(pfn: int) -> int:
    """``pfn_to_page()``: the ``struct page`` address (vmemmap, 64 bytes per page)."""
    return VMEMMAP_START + pfn * 64


class MemMap:
    """``mem_map`` of ``[start_pfn, start_pfn + nr_pages)`` and the direct-map arithmetic."""

    def __init__(self, start_pfn: int, nr_pages: int, page_size: int) -> None:
        self.start_pfn = start_pfn
        self.end_pfn = start_pfn + nr_pages
        self.nr_pages = nr_pages
        self.page_shift = page_size.bit_length() - 1
        #: One state byte per page (see the module docstring).
        self.pstate = bytearray(nr_pages)

    # -- addresses -------------------------------------------------------------------------------
    def page_address(self, pfn: int) -> int:
        """``page_address()``: the direct-map address of a PFN."""
        return PAGE_OFFSET + (pfn << self.page_shift)

    def virt_to_pfn(self, addr: int) -> int:
        """``virt_to_pfn()`` for a direct-map address (any byte inside the page)."""
        if not self.is_direct_map_addr(addr):
            raise PageAllocError(
                f"{addr:#x} is not a direct-map address of this zone "
                f"[{self.page_address(self.start_pfn):#x}, {self.page_address(self.end_pfn):#x})"
            )
        return (addr - PAGE_OFFSET) >> self.page_shift

    def is_direct_map_addr(self, addr: int) -> bool:
        return self.start_pfn <= (addr - PAGE_OFFSET) >> self.page_shift < self.end_pfn and (
            addr >= PAGE_OFFSET
        )

    is_vmalloc_addr = staticmethod(is_vmalloc_addr)
    page_struct = staticmethod(page_struct)

    # -- page states -----------------------------------------------------------------------------
    def set_allocated(self, pfn: int, order: int, mt: int) -> None:
        """``prep_new_page()``'s view: the head records migratetype and order, tails are tails."""
        i = pfn - self.start_pfn
        st = self.pstate
        st[i] = ((mt + 1) << 4) | order
        if order:
            st[i + 1 : i + (1 << order)] = b"\x40" * ((1 << order) - 1)

    def set_blocks(self, blocks: Iterable[tuple[int, int]], state: int) -> None:
        """Every page of each ``(pfn, order)`` block to ``state`` (PS_FREE or PS_OTHER)."""
        st = self.pstate
        base = self.start_pfn
        for pfn, order in blocks:
            i = pfn - base
            st[i : i + (1 << order)] = bytes((state,)) * (1 << order)

    def mark_slab(self, pfn: int, on: bool) -> None:
        """``__SetPageSlab``/``__ClearPageSlab`` on a slab's first page."""
        i = pfn - self.start_pfn
        if on:
            self.pstate[i] |= PS_SLAB
        else:
            self.pstate[i] &= ~PS_SLAB & 0xFF

    def page_state(self, pfn: int) -> str:
        """One word for a page's state: free, allocated, tail, slab, other-users, outside."""
        i = pfn - self.start_pfn
        if not 0 <= i < self.nr_pages:
            return "outside"
        v = self.pstate[i]
        if v == PS_FREE:
            return "free"
        if v == PS_OTHER:
            return "other-users"
        if v == PS_TAIL:
            return "tail"
        return "slab" if v & PS_SLAB else "allocated"

    def describe_page(self, addr: int) -> str:
        """What a non-slab direct-map address is, for kfree's bad-pointer reports."""
        pfn = (addr - PAGE_OFFSET) >> self.page_shift
        state = self.page_state(pfn)
        if state == "allocated":
            return (
                f"a page from the page allocator (pfn 0x{pfn:x}), not a kmalloc object "
                "(use free_pages/free_page)"
            )
        return f"not a kmalloc object: its page (pfn 0x{pfn:x}) is {state}"

    def check_free(self, where: str, pfn: int, order: int) -> None:
        """``free_page_is_bad()``/``bad_page()``: MemoryDebugError (``pfn`` and the reason in
        ``detail``, for ``bad_page()``'s report) unless the block is allocated with ``order``.
        (Where it goes is its pageblock's migratetype, read by the caller.)"""
        if not 0 <= order < MAX_ORDER:
            raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")
        i = pfn - self.start_pfn
        if not 0 <= i < self.nr_pages:
            raise _bad_page(
                where, pfn,
                f"pfn is outside the zone [0x{self.start_pfn:x}, 0x{self.end_pfn:x})",
            )
        v = self.pstate[i]
        if v == PS_FREE:
            raise _bad_page(where, pfn, "double free, the page is free")
        if v == PS_OTHER:
            raise _bad_page(
                where, pfn, "the page belongs to other kernel users (the allocator never "
                "returned it)",
            )
        if v == PS_TAIL:
            raise _bad_page(
                where, pfn, "a tail page of a higher-order block (free the block's first "
                "page with its order)",
            )
        if v & PS_SLAB:
            raise _bad_page(where, pfn, "the page belongs to a slab (use kfree)")
        got = v & 0x0F
        if got != order:
            raise _bad_page(where, pfn, f"the block was allocated with order {got}")


def _bad_page(where: str, pfn: int, reason: str) -> MemoryDebugError:
    return MemoryDebugError(
        f"BUG: Bad page state: {where}: {reason}", pfn=pfn, detail=reason
    )
