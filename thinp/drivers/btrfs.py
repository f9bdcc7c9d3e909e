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

from ..config import PAGE_SIZE
from ._cowdriver import CowDriver
from .base import Capabilities, register

BLOCK = PAGE_SIZE
NODESIZE = 16384
LEAF_CAPACITY = NODESIZE - 101          # bytes for items after the leaf header
ITEM_HEADER = 25
LEAF_FILL = 0.74                        # measured here: the Debian rootfs leaves, 300-file trees
FANOUT = 493
MAX_INLINE = 2048
MAX_EXTENT_BLOCKS = (128 << 20) // BLOCK
MKFS_BYTES = 4680 * 1024     # du of a fresh 10 GiB btrfs loop file (SOURCES)
META_COPIES = 2              # DUP
EXTENT_ITEM = ITEM_HEADER + 53           # btrfs_file_extent_item
INODE_ITEM = ITEM_HEADER + 160


def inode_item_bytes(node, trees) -> int:
    """Bytes of the fs-tree items keyed by one inode's objectid: its inode
    item; for a directory the two directory items per name plus the children's
    inode refs (counted here, beside them); inline data or one extent item per
    file; xattrs."""
    total = INODE_ITEM
    if node.is_dir:
        for name in node.entries:
            n = len(name.encode())
            total += 2 * (ITEM_HEADER + 30 + n) + (ITEM_HEADER + 10 + n)
    elif node.is_reg:
        total += EXTENT_ITEM if node.ino in trees else ITEM_HEADER + 21 + node.size
    elif node.target is not None:
        total += ITEM_HEADER + 21 + len(node.target)
    if node.xattrs:
        total += sum(ITEM_HEADER + 30 + len(k) + len(v) for k, v in node.xattrs.items())
    return total


def item_bytes(fs, trees) -> int:
    """Bytes of all fs-tree items of a subvolume's namespace."""
    return sum(inode_item_bytes(node, trees) for node in fs.inodes.values())


def tree_shape(nr_item_bytes: int, fill: float = LEAF_FILL) -> tuple[int, int]:
    """(leaves, nodes) of a tree holding that many item bytes at ``fill``."""
    leaves = max(1, math.ceil(nr_item_bytes / (LEAF_CAPACITY * (fill if nr_item_bytes > LEAF_CAPACITY else 1))))
    n, level = leaves, leaves
    while level > 1:
        level = math.ceil(level / FANOUT)
        n += level
    return leaves, n


@register
class BtrfsDriver(CowDriver):
    name = "btrfs"
    unit_bytes = BLOCK

    def _configure(self, **opts):
        self.max_inline = int(opts.pop("max_inline", MAX_INLINE))
        self.leaf_fill = float(opts.pop("leaf_fill", LEAF_FILL))
        if not 0.3 <= self.leaf_fill <= 1.0:
            raise ValueError(f"btrfs: leaf_fill {self.leaf_fill} must be in 0.3..1.0")
        super()._configure(**opts)

    # ------------------------------------------------------------ metadata
    def _shape(self, layer):
        """(leaves, objectid -> leaf) of the layer's fs tree: items laid out in
        objectid order, leaves filled to ``leaf_fill``.  Refreshed at commits."""
        sh = layer.extra.get("shape")
        if sh is None:
            objs = layer.extra.setdefault("objid", {})
            inodes, trees = layer.fs.inodes, layer.trees
            order = sorted((objs.get(ino, 1 << 40), ino) for ino in inodes.keys())
            per_leaf = LEAF_CAPACITY * self.leaf_fill
            leaf_of, pos = {}, 0
            for obj, ino in order:
                leaf_of[obj] = int(pos // per_leaf)
                pos += inode_item_bytes(inodes.peek(ino) if hasattr(inodes, "peek") else inodes[ino], trees)
            leaves = tree_shape(pos, self.leaf_fill)[0]
            sh = layer.extra["shape"] = (leaves, leaf_of, len(inodes))
            layer.extra["tail"] = {"end": pos, "leaf": {}, "bytes": {}}
        return sh

    def _tail_leaf(self, layer, obj, ino) -> int:
        """The leaf of an objectid made since the tree was last laid out: new
        objectids sort last, so their items fill the last leaf and then new
        leaves after it, in creation order (a 10,000-file step is hundreds of
        leaves, not one)."""
        tail = layer.extra.get("tail")
        if tail is None:
            tail = layer.extra["tail"] = {"end": 0, "leaf": {}, "bytes": {}}
        inodes = layer.fs.inodes
        try:
            node = inodes.peek(ino) if hasattr(inodes, "peek") else inodes[ino]
        except KeyError:                # unlinked
            node = None
        if node is None:
            nbytes = INODE_ITEM
        elif node.is_dir:       # O(1): a directory is dirtied once per entry added
            nbytes = INODE_ITEM + len(node.entries) * (3 * ITEM_HEADER + 70 + 3 * 12)
        else:
            nbytes = inode_item_bytes(node, layer.trees)
        leaf = tail["leaf"].get(obj)
        if leaf is None:
            leaf = tail["leaf"][obj] = int(tail["end"] // (LEAF_CAPACITY * self.leaf_fill))
        tail["end"] += nbytes - tail["bytes"].get(obj, 0)
        tail["bytes"][obj] = nbytes
        return leaf

    def _dirty_meta(self, layer, ino, extents_added=0):
        owned = layer.owned
        before = len(owned)
        owned.add(("root",))
        objs = layer.extra.setdefault("objid", {})   # btrfs objectids go up in creation order
        obj = objs.get(ino)
        if obj is None:
            obj = objs[ino] = len(objs) + 256
        layer.extra["changed"] = True
        leaves, leaf_of, _n = self._shape(layer)
        leaf = leaf_of.get(obj)
        if leaf is None:
            leaf = self._tail_leaf(layer, obj, ino)
            if leaf >= leaves:          # the tree grew past its last leaf
                if leaves == 1:
                    owned.add(("leaf", 0))      # the old root leaf is now leaf 0
                leaves = leaf + 1
        if leaves > 1:
            owned.add(("leaf", leaf))
            idx, span = leaf, FANOUT
            while span < leaves:
                idx //= FANOUT
                owned.add(("node", idx, span))
                span *= FANOUT
            if extents_added:
                # a leaf that had room takes the new extent items; a full one splits
                added = layer.extra.setdefault("leaf_added", {})
                added[leaf] = added.get(leaf, 0) + extents_added * EXTENT_ITEM
                if LEAF_CAPACITY * self.leaf_fill + added[leaf] > LEAF_CAPACITY:
                    owned.add(("split", leaf))
        self._counters["meta_bytes_written"] += (len(owned) - before) * NODESIZE * META_COPIES

    def sync(self):
        super().sync()
        for layer in self.layers.values():
            if layer.extra.pop("changed", False):
                sh = layer.extra.get("shape")
                # new objectids sort last (the last leaf): re-lay the tree only
                # when it has grown or shrunk by more than 5%
                if sh is not None and abs(len(layer.fs.inodes) - sh[2]) > 0.05 * sh[2]:
                    del layer.extra["shape"]

    def _on_snapshot(self, src, new):
        new.owned = {("root",)}
        if src is not None:
            new.extra["objid"] = dict(src.extra.get("objid", {}))
            new.extra["inline"] = set(src.extra.get("inline", ()))         # the leaf items are shared
            new.extra["inline_data"] = dict(src.extra.get("inline_data", {}))
            new.extra["shape"] = self._shape(src)       # the same tree until it changes
            t = src.extra.get("tail") or {"end": 0}
            new.extra["tail"] = {"end": t["end"], "leaf": {}, "bytes": {}}
            # the source's nodes (all but its root, which the snapshot
            # replaces) are now shared: no longer exclusive, still on disk
            src.extra["shared_nodes"] = src.extra.get("shared_nodes", 0) + len(src.owned) - 1
            src.owned = {("root",)}
        self._counters["meta_bytes_written"] += NODESIZE * META_COPIES * (1 if src is None else 2)

    def _metadata_bytes(self) -> int:
        nodes = 0
        for layer in self.layers.values():
            nodes += len(layer.owned) + layer.extra.get("shared_nodes", 0)
        return nodes * NODESIZE * META_COPIES

    def _fixed_bytes(self) -> int:
        return MKFS_BYTES

    # ------------------------------------------------------------ data
    def _payload_get(self, layer, ino, size, lo, hi):
        out = bytearray(hi - lo)
        hi = min(hi, size)
        if hi <= lo:
            return out
        inl = layer.extra.get("inline_data", {}).get(ino)
        if inl is not None:
            part = inl[lo:hi]
            out[:len(part)] = part
            return out
        t = layer.trees.get(ino)
        if t is None:
            return out
        store, blobs = self.store, self.blobs
        k0 = lo // BLOCK
        for i, v in enumerate(store.lookup(t, k0, (hi + BLOCK - 1) // BLOCK)):
            if not v:
                continue
            blk = blobs.get(store.extent_of(v), {}).get(store.offset_of(v))
            if blk is None:
                continue
            b = (k0 + i) * BLOCK
            a, z = max(lo, b), min(hi, b + BLOCK)
            out[a - lo:z - lo] = blk[a - b:z - b]
        return out

    def _write_data(self, layer, node, offset, length, pend=None):
        if length <= 0:
            return
        ino = node.ino
        end = offset + length
        payload = self.payload and pend is not None
        inline = layer.extra.setdefault("inline", set())
        t = layer.trees.get(ino)
        if t is None and node.size <= self.max_inline:
            inline.add(ino)                 # data lives in the leaf item
            if payload:
                layer.extra.setdefault("inline_data", {})[ino] = bytes(self._merged(layer, ino, pend, 0, node.size))
            self._dirty_meta(layer, ino)
            return
        if ino in inline:                   # grows out of the leaf: rewrite from 0
            inline.discard(ino)
            offset, end = 0, max(end, node.size)
        t = self._own_tree(layer, ino)
        store = self.store
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        buf = self._merged(layer, ino, pend, b0 * BLOCK, b1 * BLOCK) if payload else None
        layer.extra.get("inline_data", {}).pop(ino, None)
        old = store.lookup(t, b0, b1)
        opens = layer.extra.setdefault("open", {})
        # blocks of the extent this transaction is still writing (delayed
        # allocation: dirty pages not yet written out) are changed in memory:
        # a 200-byte append rewrites its last page, not a new 4 KiB extent
        op = opens.get(ino)
        k = b0
        if op is not None and op[1] <= b0 < op[2] and old[0] and store.extent_of(old[0]) == op[0]:
            k = min(b1, op[2])
            if buf is not None:
                blk = self.blobs.setdefault(op[0], {})
                for j in range(b0, k):
                    r = (j - b0) * BLOCK
                    blk[j - op[1]] = bytes(buf[r:r + BLOCK])
        # partial first/last blocks that exist are read, modified, written elsewhere
        copied = 0
        if offset % BLOCK and old[0] and k == b0:
            copied += 1
        if end % BLOCK and old[-1] and (b1 - 1 != b0 or not offset % BLOCK) and b1 - 1 >= k:
            copied += 1
        added = 0
        k0 = k
        while k < b1:
            n = min(b1 - k, MAX_EXTENT_BLOCKS)
            op = opens.get(ino)
            if op is not None and op[2] == k and store.ext_len[op[0]] + n <= MAX_EXTENT_BLOCKS \
                    and store.try_extend(op[0], n):
                ext, first = op[0], op[1]
                store.map(t, k, k + n, ext, k - first, fresh=False)
                opens[ino] = (ext, first, k + n)
            else:
                ext, first = store.new_extent(n, layer.sid), k
                store.map(t, k, k + n, ext, 0)
                opens[ino] = (ext, k, k + n)
                added += 1
            if buf is not None:
                blk = self.blobs.setdefault(ext, {})
                for j in range(k, k + n):
                    r = (j - b0) * BLOCK
                    blk[j - first] = bytes(buf[r:r + BLOCK])
            k += n
        replaced = int((old[k0 - b0:] != 0).sum())
        if replaced:
            self._counters["cow_count"] += replaced
            self._counters["cow_bytes"] += copied * BLOCK
            added += 2                      # the old extent item is split around the new one
        self._dirty_meta(layer, ino, added)

    def _truncate_data(self, layer, node, old, new):
        inl = layer.extra.get("inline_data", {})
        if node.ino in inl:
            inl[node.ino] = inl[node.ino][:new]
        if node.ino not in layer.trees:
            return
        t = self._own_tree(layer, node.ino)
        keep = (new + BLOCK - 1) // BLOCK
        self.store.unmap(t, keep, (old + BLOCK - 1) // BLOCK)
        layer.extra.get("open", {}).pop(node.ino, None)
        if new < old and new % BLOCK and self.store.lookup(t, keep - 1, keep)[0]:
            self._rewrite_tail(layer, node, new, (keep - 1) * BLOCK)

    # ------------------------------------------------------------ reporting
    def qgroup(self, id) -> dict:
        """``btrfs qgroup show --raw`` of a layer's subvolume: referenced and
        exclusive bytes, data plus tree metadata (one copy, as qgroups count)."""
        layer = self._layer(id)
        ref_meta = tree_shape(item_bytes(layer.fs, layer.trees), self.leaf_fill)[1] * NODESIZE
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
        node = layer.fs.inode(path)
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
        node = layer.fs.inode(path)
        t = layer.trees.get(node.ino)
        if t is None:
            return []
        vals = self.store.lookup(t, 0, (node.size + BLOCK - 1) // BLOCK)
        ext = sorted(set((vals[vals != 0] >> np.uint64(24)).astype(np.int64) - 1))
        return [int(self.store.ext_len[e]) * BLOCK for e in ext]

    def capabilities(self):
        return Capabilities(reproducible_diff=True, native_diff=False, shares_page_cache="device",
                            copy_on_write="extent", changes_by_stat=True, extra={"block_size": BLOCK, "nodesize": NODESIZE})

    def status(self):
        return [("Storage Driver", self.name), ("Build Version", "Btrfs v6.2 (thinp model)"),
                ("Library Version", "102")]

    def metadata(self, id):
        return {"SubvolumeId": str(self._layer(id).sid)}
