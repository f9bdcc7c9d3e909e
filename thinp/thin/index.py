"""The pool's volatile lookup index: radix trees in RAM beside dm's btrees.

:class:`VolatileIndex` holds the same arrays the replay kernels run on (a
:class:`~thinp.pdata.radix.Space` and a :class:`~thinp.thin._kernels.Devices`
table), in anonymous memory instead of a file.  It is a cache: the dm-format
``metadata`` file is the truth, and :meth:`ThinPool.open` rebuilds the index
by walking its leaves.  Nothing of it is ever written to disk, so its
commit only ends the transaction (blocks freed in it become allocatable,
nodes written in it are shadowed again next time).

Index node 0 is reserved (a root of 0 means an empty tree).  The index's own
metadata accounting (reserve, low water mark) is switched off: metadata
space, its events and its exhaustion are dm's, counted by the pool.

Pages.  The node array starts in small pages: random provisioning touches
a node per few mappings (1 M random first writes into a 1 TiB thin fill
32 K leaves, 32 mappings each), and a fresh huge page costs far more
system time than the small pages it replaces where the kernel must first
get the memory back from a hypervisor (free page reporting hands free
2 MiB blocks back to the host: 1.15 s of system time to first-touch
130 MiB of huge pages against 0.06 s in small pages, measured on this
project's Firecracker VM).  Once the index is dense
(DENSE_MAPPINGS_PER_NODE mappings per node in use), random lookups over it
gain more from the TLB reach of huge pages (overwrites of a full 1 TiB
thin: 26 M/s by CPU time against 11-13 M/s in small pages), so the first
replay that finds it dense and serves it more lookups than mapping changes
(``ThinPool.replay``) collapses the nodes into huge pages and advises them
from then on; a pool's open of a dense index advises them after filling it
(``settle_pages``).  A dense index that is still growing (sequential
provisioning: 4 M first writes fill 8 K leaves) stays in small pages: its
new nodes, faulted in as huge pages after a commit had advised them, cost
0.05-0.09 s of system time a 4 M-write round, and the commit's collapse
more, for lookups that walk one leaf after another.
"""
from __future__ import annotations

import mmap
import sys
import uuid as _uuid

import numpy as np

from ..pdata import memory
from ..pdata import radix as K
from . import _kernels as TK
from .metadata import Metadata, Superblock

#: index nodes (4 KiB each, touched lazily): room for a billion mappings
INDEX_NODES = 1 << 21
# the node array is 8 GiB of address space, reserved without commitment so
# that the kernel's overcommit heuristic does not refuse it on small machines
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)
_MADV_COLLAPSE = getattr(mmap, "MADV_COLLAPSE", 25)  # Linux 6.1
_HUGE_PAGE = 2 << 20
_MADV_FREE = getattr(mmap, "MADV_FREE", None)
#: node arrays closed indexes left for the next build (VolatileIndex.close)
_SPARE: list = []
#: a commit moves the index to huge pages once it holds this many mappings
#: per node in use (leaves half full), and at least DENSE_MIN_NODES nodes
DENSE_MAPPINGS_PER_NODE = 256
DENSE_MIN_NODES = _HUGE_PAGE // (K.NODE_ENTRIES * 8)


class VolatileIndex(Metadata):
    """Radix trees, device table and data space counts in RAM."""

    @classmethod
    def build(cls, *, nr_data_blocks: int, block_size: int, options: int, low_water_mark: int,
              commit_interval: int, time: int = 0, dcursor: int = 0, nr_nodes: int = INDEX_NODES) -> "VolatileIndex":
        md = cls()
        md.path = None
        nbytes = nr_nodes * K.NODE_ENTRIES * 8
        md.mm = _take_spare(nbytes) or mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)
        md.meta = np.frombuffer(md.mm, dtype=np.uint64).reshape(nr_nodes, K.NODE_ENTRIES)
        md.meta[0] = 0  # (never allocated; a recycled array's is zero already)
        md.sb = Superblock(
            generation=0, transaction_id=0, time=time, data_block_size=block_size,
            nr_data_blocks=nr_data_blocks, nr_metadata_blocks=nr_nodes, flags=0, held_root=0, devdir=0,
            devdir_csum=0, dsm_start=0, dsm_pages=0, msm_start=0, msm_pages=0, dcursor=dcursor, mcursor=1,
            options=options, low_water_mark=low_water_mark, uuid=str(_uuid.UUID(int=0)), nr_devices=0,
            commit_interval=commit_interval, held_csum=0)
        mrc = memory.zeros(nr_nodes, np.uint32)
        mrc[0] = 1
        md.build_space(mrc, memory.zeros(nr_data_blocks, np.uint32), drc_zero=True)
        scal = md.sp.scal
        scal[K.S_META_RESERVE] = 0
        scal[K.S_META_LWM] = 0
        scal[K.S_META_LWM_ARMED] = 0
        md.dv = TK.make_devices(64)
        #: the held metadata snapshot's trees (a Devices table), or None
        md.held = None
        #: True once the node array is advised huge pages (see settle_pages)
        md.huge = False
        #: the node allocation cursor's high-water mark
        md.hwm = 1
        return md

    def settle_pages(self, collapse: bool = True) -> None:
        """Move a dense index to transparent huge pages (see the module's
        docstring): ask for them on the node array from now on and, with
        ``collapse``, collapse the nodes allocated so far (MADV_COLLAPSE,
        where the kernel has it).  Random lookups over millions of nodes
        miss the TLB on every request with 4 KiB pages.

        A pool's open calls this after filling the index, without
        ``collapse``: faulting or collapsing the fill's nodes in as huge
        pages there cost 0.5-1 s of system time for 16 M mappings on a busy
        machine, whereas khugepaged collapses them in the background.  A
        replay serving lookups calls it with ``collapse``."""
        sp = self.sp
        self._note_cursor()
        nodes = int(sp.scal[K.S_MUSED])
        if self.huge or nodes < DENSE_MIN_NODES or int(self.dv.mapped.sum()) < DENSE_MAPPINGS_PER_NODE * nodes:
            return
        self.huge = True
        if _MADV_HUGEPAGE is None:
            return
        self.mm.madvise(_MADV_HUGEPAGE)
        if collapse:
            # next-fit allocation: the nodes in use lie below the cursor's high-water mark
            end = -(-self.hwm * K.NODE_ENTRIES * 8 // _HUGE_PAGE) * _HUGE_PAGE
            try:
                self.mm.madvise(_MADV_COLLAPSE, 0, min(end, len(self.mm)))
            except OSError:
                pass  # (before Linux 6.1: khugepaged collapses them in the background)

    def commit(self, first: bool = False) -> None:
        """End the index's transaction (nothing is written anywhere).

        Nodes stay writable in place (``mnew`` is kept): no copy of the index
        survives a commit (an abort rebuilds it from dm's metadata), so only
        a node shared by two trees (a snapshot's, the held copy's: a count
        above 1) is copied on its next write.  Clearing it made the first
        write to each node after every commit copy it: 25 K leaf copies
        (and as many fresh pages faulted in) for the 48 K requests after the
        commit at request 1 M of random provisioning into a 1 TiB thin."""
        sp = self.sp
        K.release_pending(sp)
        sp.mdirty[:] = 0
        sp.ddirty[:] = 0
        sp.scal[K.S_OPS_SINCE_COMMIT] = 0
        self.dv.changed[:] = 0
        self._note_cursor()

    def close(self) -> None:
        """Release the index.  Its node array, unless huge pages were asked
        for it or a caller still holds a view of it, is kept for the next
        index this process builds (one kept at a time): the pages it touched
        stay mapped, lazily freed (MADV_FREE: the kernel takes them back only
        under memory pressure), so that the next pool's replay writes its
        new nodes there instead of faulting fresh pages in.  A node's content
        does not matter: every node is zero-filled when allocated
        (``alloc_meta``), and node 0 is never allocated.  Fresh anonymous
        pages cost ~1.3-2 us each on this project's VM: random provisioning
        of 1 M blocks into a 1 TiB thin faults 33 K of them for its nodes,
        sequential provisioning of 4 M blocks 8 K."""
        mm = self.mm
        keep = mm is not None and not self.huge and _MADV_FREE is not None
        used = 0
        if keep:
            if self.sp is not None:
                self._note_cursor()
            used = min(len(mm), -(-self.hwm * K.NODE_ENTRIES * 8 // mmap.PAGESIZE) * mmap.PAGESIZE)
            self.mm = None
        super().close()
        if keep:
            _give_spare(mm, used)

    def _note_cursor(self) -> None:
        self.hwm = max(self.hwm, int(self.sp.scal[K.S_MCURSOR]))

    def resize_data(self, nr: int) -> None:
        sb, sp = self.sb, self.sp
        old_nr = sb.nr_data_blocks
        drc = np.zeros(nr, dtype=np.uint32)
        drc[:old_nr] = sp.drc
        in_use = drc > 0
        in_use[sp.dpend[:sp.scal[K.S_DNPEND]]] = True
        self.sp = sp._replace(
            drc=drc, dbits=K.make_bitmap(in_use, nr),
            dpend=np.concatenate([sp.dpend, np.zeros(nr - old_nr, dtype=np.uint32)]),
            ddirty=np.ones(-(-nr // K.SM_PAGE_ENTRIES), dtype=np.uint8),
            dpass=np.concatenate([sp.dpass, np.zeros(nr - old_nr, dtype=np.uint32)]))
        sb.nr_data_blocks = nr
        scal = self.sp.scal
        scal[K.S_NR_DATA] = nr
        if (nr - scal[K.S_DUSED]) > scal[K.S_LWM]:
            scal[K.S_LWM_ARMED] = 1


def _give_spare(mm: mmap.mmap, used: int) -> None:
    """Keep a closed index's node array for the next build, its first
    ``used`` bytes (the pages its nodes touched) lazily freed; unless a view
    of it is still held somewhere (then it goes when the view goes)."""
    try:
        mm.resize(len(mm))  # (BufferError while a buffer of it is exported; else a no-op)
        if used:
            mm.madvise(_MADV_FREE, 0, used)
    except (BufferError, OSError, ValueError, SystemError):
        return
    while _SPARE:
        try:
            _SPARE.pop().close()
        except (IndexError, BufferError):
            pass
    _SPARE.append(mm)


def _take_spare(nbytes: int) -> mmap.mmap | None:
    """A node array a closed index left (see VolatileIndex.close), if one of
    ``nbytes`` is there."""
    try:
        mm = _SPARE.pop()
    except IndexError:
        return None
    if len(mm) == nbytes:
        return mm
    mm.close()
    return None
