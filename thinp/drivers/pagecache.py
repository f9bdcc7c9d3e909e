"""What containers' reads cost in memory: a page cache keyed the way each driver's
kernel keys it.

One :class:`PageCache` per driver.  Every read a mounted view serves calls
``cache.read(key, nbytes, offset=0)`` and gets ``(hit_pages, miss_pages)``
back.  ``key`` is any hashable the driver chooses; two reads share memory
exactly when they use the same key and overlapping 4 KiB pages:

===============================  ==============================================
driver                           key (so what N containers reading one image
                                 file cost)
===============================  ==============================================
aufs, overlay, overlay2, vfs*    the inode of the file in the branch that holds
                                 it: ``("ino", ino)`` -- N containers share one
                                 copy until a container copies the file up;
                                 a freed inode's pages leave the cache
devicemapper                     ``(thin_id, ino)``: every container is its own
                                 device, so N copies
btrfs                            ``(subvolume_id, ino)``: a snapshot's inode is
                                 another inode, so N copies
zfs                              ``("record", record_id)`` with the record's
                                 offset: the ARC caches physical blocks, so
                                 clones share them (one copy)
===============================  ==============================================

(*vfs copies every file into every layer, so its keys differ per layer.)

``capacity_bytes=None`` is unbounded (the cost of the working set); a size
makes it an LRU that evicts the least recently used page.
"""
from __future__ import annotations

from collections import OrderedDict

from ..config import PAGE_SIZE

PAGE = PAGE_SIZE


class PageCache:
    """An LRU (or unbounded) cache of 4 KiB pages of driver-chosen keys."""

    def __init__(self, capacity_bytes: int | None = None, page_size: int = PAGE):
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes {capacity_bytes} must be >= 0 or None")
        self.page_size = int(page_size)
        self.capacity_pages = None if capacity_bytes is None else int(capacity_bytes) // self.page_size
        self._pages: OrderedDict = OrderedDict()
        self._by_key: dict = {}      # key -> set of its cached page numbers
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        #: a list to append ``(key, first_page, end_page)`` to on every read
        #: (the timing model replays them through its own LRU), or None
        self.log: list | None = None

    def read(self, key, nbytes: int, offset: int = 0) -> tuple[int, int]:
        """Read ``nbytes`` at ``offset`` of object ``key``; returns (hit, miss) pages."""
        if nbytes <= 0:
            return 0, 0
        ps = self.page_size
        p0, p1 = offset // ps, (offset + nbytes + ps - 1) // ps
        if self.log is not None:
            self.log.append((key, p0, p1))
        pages = self._pages
        hit = miss = 0
        lru = self.capacity_pages is not None
        for p in range(p0, p1):
            k = (key, p)
            if k in pages:
                hit += 1
                if lru:
                    pages.move_to_end(k)
            else:
                miss += 1
                pages[k] = None
                own = self._by_key.get(key)
                if own is None:
                    own = self._by_key[key] = set()
                own.add(p)
        if lru:
            while len(pages) > self.capacity_pages:
                (ek, ep), _ = pages.popitem(last=False)
                own = self._by_key[ek]
                own.discard(ep)
                if not own:
                    del self._by_key[ek]
                self.evictions += 1
        self.hits += hit
        self.misses += miss
        return hit, miss

    def note_read(self, key, nbytes: int, offset: int = 0) -> None:
        """Log a read for the timing model (``log``) without counting it in
        this cache: a read the driver makes itself, not a container's (vfs'
        layer copy reading its source tree), whose memory the byte columns
        do not count."""
        if self.log is not None and nbytes > 0:
            ps = self.page_size
            self.log.append((key, offset // ps, (offset + nbytes + ps - 1) // ps))

    def drop(self, key) -> None:
        """Forget every page of ``key`` (the file or device went away)."""
        for p in self._by_key.pop(key, ()):
            del self._pages[(key, p)]

    def drop_where(self, pred) -> None:
        """Forget every page of each key for which ``pred(key)`` is true (a
        device or subvolume went away)."""
        for key in [k for k in self._by_key if pred(k)]:
            self.drop(key)

    def clear(self) -> None:
        """``echo 1 > /proc/sys/vm/drop_caches``."""
        self._pages.clear()
        self._by_key.clear()

    @property
    def cached_bytes(self) -> int:
        return len(self._pages) * self.page_size

    def __len__(self) -> int:
        return len(self._pages)
