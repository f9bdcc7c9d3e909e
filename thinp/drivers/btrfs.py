"""btrfs: a subvolume per layer, each a snapshot of its parent.

Data (see :mod:`._cowstore`): CoW at 4 KiB blocks into *extents*.  Every
write goes to a new place; an append that continues the file's open extent
in the same transaction grows it (delayed allocation), up to 128 MiB
(``BTRFS_MAX_EXTENT_SIZE``).  A partial-block overwrite of an existing block
reads and copies that 4 KiB (``cow_bytes``).  An extent stays allocated,
whole, while any block of it is referenced (bookending).  Files of at most
2,048 bytes live inline in the tree leaf (``max_inline``).

Metadata: each subvolume has its own fs tree of 16 KiB nodes (``nodesize``),
``DUP`` on disk (two copies).  The model of the tree:

* items of about 32 inodes fill a leaf (inode item, refs, dir items and
  extent items of a typical file), so inode ``ino`` lives in leaf
  ``ino // 32``, and the tree is one leaf, or a root over ``ceil(n/32)``
  leaves (fanout 493 per internal level);
* a snapshot gets a new root and the source's root is CoWed too, so right
  after ``btrfs subvolume snapshot`` both have 16 KiB exclusive;
* a change to inode ``ino`` CoWs its leaf and the path above it; adding
  extent items (a write that splits an extent) to a leaf of a multi-level
  tree splits the leaf (one more new leaf), as sequentially filled leaves are
  full.

Measured here (kernel 6.18, btrfs-progs 6.2), snapshot then overwrite 4 KiB
of a 1 MiB file: one-leaf tree, qgroup exclusive 20,480 (4 KiB + 16 KiB);
two-level tree (300 more files), 53,248 (4 KiB + 48 KiB, the SOURCES
figure).  ``btrfs fi du``: 4,096 exclusive either way; the old 1 MiB extent
stays whole.  The model gives the same numbers (tests/drivers/test_block_btrfs.py).
"""
from __future__ import annotations

import math

from ._cowdriver import CowDriver
from ._cowstore import FileTree
from .base import Capabilities, register

BLOCK = 4096
NODESIZE = 16384
INODES_PER_LEAF = 32
FANOUT = 493
MAX_INLINE = 2048
MAX_EXTENT_BLOCKS = (128 << 20) // BLOCK
MKFS_BYTES = 4680 * 1024     # du of a fresh 10 GiB btrfs loop file (SOURCES)
META_COPIES = 2              # DUP


def tree_height(nr_inodes: int) -> int:
    leaves = max(1, math.ceil(nr_inodes / INODES_PER_LEAF))
    if leaves == 1:
        return 1
    return 1 + max(1, math.ceil(math.log(leaves) / math.log(FANOUT)))


def tree_nodes(nr_inodes: int) -> int:
    leaves = max(1, math.ceil(nr_inodes / INODES_PER_LEAF))
    n, level = leaves, leaves
    while level > 1:
        level = math.ceil(level / FANOUT)
        n += level
    return n


@register
class BtrfsDriver(CowDriver):
    name = "btrfs"
    unit_bytes = BLOCK

    def _configure(self, **opts):
        self.max_inline = int(opts.pop("max_inline", MAX_INLINE))
        super()._configure(**opts)

    # ------------------------------------------------------------ metadata
    def _dirty_meta(self, layer, ino, extents_added=0):
        owned = layer.owned
        before = len(owned)
        h = tree_height(len(layer.fs.inodes))
        leaf = ino // INODES_PER_LEAF
        owned.add(("root",))
        if h > 1:
            owned.add(("leaf", leaf))
            idx = leaf
            for lv in range(1, h - 1):
                idx //= FANOUT
                owned.add(("node", lv, idx))
            if extents_added:
                owned.add(("split", leaf))
        self._counters["meta_bytes_written"] += (len(owned) - before) * NODESIZE * META_COPIES

    def _on_snapshot(self, src, new):
        new.owned = {("root",)}
        if src is not None:
            src.owned = {("root",)}
        self._counters["meta_bytes_written"] += NODESIZE * META_COPIES * (1 if src is None else 2)

    def _metadata_bytes(self) -> int:
        nodes = 0
        for layer in self.layers.values():
            nodes += len(layer.owned)
        return nodes * NODESIZE * META_COPIES

    def _fixed_bytes(self) -> int:
        return MKFS_BYTES

    # ------------------------------------------------------------ data
    def _write_data(self, layer, node, offset, length):
        if length <= 0:
            return
        ino = node.ino
        end = offset + length
        inline = layer.extra.setdefault("inline", set())
        t = layer.trees.get(ino)
        if t is None and node.size <= self.max_inline:
            inline.add(ino)                 # data lives in the leaf item
            self._dirty_meta(layer, ino)
            return
        if ino in inline:                   # grows out of the leaf: rewrite from 0
            inline.discard(ino)
            offset, end = 0, max(end, node.size)
        t = self._own_tree(layer, ino)
        store = self.store
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        old = store.lookup(t, b0, b1)
        # partial first/last blocks that exist are read, modified, written elsewhere
        copied = 0
        if offset % BLOCK and old[0]:
            copied += 1
        if end % BLOCK and old[-1] and (b1 - 1 != b0 or not offset % BLOCK):
            copied += 1
        opens = layer.extra.setdefault("open", {})
        added = 0
        k = b0
        while k < b1:
            n = min(b1 - k, MAX_EXTENT_BLOCKS)
            op = opens.get(ino)
            if op is not None and op[2] == k and store.ext_len[op[0]] + n <= MAX_EXTENT_BLOCKS \
                    and store.try_extend(op[0], n):
                ext, first = op[0], op[1]
                store.map(t, k, k + n, ext, k - first)
                opens[ino] = (ext, first, k + n)
            else:
                ext = store.new_extent(n, layer.sid)
                store.map(t, k, k + n, ext, 0)
                opens[ino] = (ext, k, k + n)
                added += 1
            k += n
        replaced = int((old != 0).sum())
        if replaced:
            self._counters["cow_count"] += replaced
            self._counters["cow_bytes"] += copied * BLOCK
            added += 2                      # the old extent item is split around the new one
        self._dirty_meta(layer, ino, added)

    def _truncate_data(self, layer, node, old, new):
        if node.ino not in layer.trees:
            return
        t = self._own_tree(layer, node.ino)
        keep = (new + BLOCK - 1) // BLOCK
        self.store.unmap(t, keep, (old + BLOCK - 1) // BLOCK)
        layer.extra.get("open", {}).pop(node.ino, None)

    # ------------------------------------------------------------ reporting
    def qgroup(self, id) -> dict:
        """``btrfs qgroup show --raw`` of a layer's subvolume: referenced and
        exclusive bytes, data plus tree metadata (one copy, as qgroups count)."""
        layer = self._layer(id)
        ref_meta = tree_nodes(len(layer.fs.inodes)) * NODESIZE
        excl_meta = len(layer.owned) * NODESIZE
        return {"referenced": self._referenced_data_bytes(layer) + ref_meta,
                "exclusive": self._exclusive_data_bytes(layer) + excl_meta,
                "exclusive_data": self._exclusive_data_bytes(layer), "exclusive_metadata": excl_meta}

    def _exclusive_bytes(self, layer) -> int:
        return self._exclusive_data_bytes(layer) + len(layer.owned) * NODESIZE

    def filesystem_du(self, id, path) -> dict:
        """``btrfs filesystem du --raw`` of one file: total (bytes it maps),
        exclusive (bytes of extents no other file, in any subvolume, references)
        and set shared."""
        import numpy as np

        layer = self._layer(id)
        node = layer.fs._lookup(path)
        t = layer.trees.get(node.ino)
        if t is None:
            return {"total": 0, "exclusive": 0, "set_shared": 0}
        mine = self.store.referenced([t])
        others = self.store.referenced(
            u for x in self.layers.values() for ino, u in x.trees.items() if not (x is layer and ino == node.ino))
        vals = self.store.lookup(t, 0, (node.size + BLOCK - 1) // BLOCK)
        total = int((vals != 0).sum()) * BLOCK
        ext = (vals[vals != 0] >> np.uint64(24)).astype(np.int64) - 1
        excl_ids = set(int(e) for e in np.flatnonzero((mine == 1) & (others == 0)))
        excl = sum(1 for e in ext if int(e) in excl_ids) * BLOCK
        return {"total": total, "exclusive": excl, "set_shared": total - excl}

    def extent_bytes(self, id, path) -> list[int]:
        """Sizes on disk of the extents a file references (whole extents)."""
        import numpy as np

        layer = self._layer(id)
        node = layer.fs._lookup(path)
        t = layer.trees.get(node.ino)
        if t is None:
            return []
        vals = self.store.lookup(t, 0, (node.size + BLOCK - 1) // BLOCK)
        ext = sorted(set((vals[vals != 0] >> np.uint64(24)).astype(np.int64) - 1))
        return [int(self.store.ext_len[e]) * BLOCK for e in ext]

    def capabilities(self):
        return Capabilities(reproducible_diff=True, native_diff=False, shares_page_cache="device",
                            copy_on_write="extent", extra={"block_size": BLOCK, "nodesize": NODESIZE})

    def status(self):
        return [("Storage Driver", self.name), ("Build Version", "Btrfs v6.2 (thinp model)"),
                ("Library Version", "102")]

    def metadata(self, id):
        return {"SubvolumeId": str(self._layer(id).sid)}
