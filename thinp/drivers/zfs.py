"""zfs: each layer is a clone of a snapshot of its parent's dataset
(``zfs snapshot parent@id && zfs clone parent@id child``, as Docker's zfs
driver does).

Data (see :mod:`._cowstore`): a file is one block of ``roundup(size,
sector)`` while it fits in ``recordsize`` (128 KiB default), else records of
``recordsize``.  Every change to a record writes a new copy at the next txg
(CoW); a partial write of an existing record reads and rewrites the whole
record (``cow_bytes``).  Rewrites of a record already dirty in the open txg
stay in memory.  A record is freed when no dataset's tree maps it (a clone's
origin snapshot keeps its records).  Sectors are 4 KiB (``ashift=12``, what
zfs-fuse chose for a file vdev here).

Metadata: blocks of 16 KiB logical, compressed to one 4 KiB sector, stored
twice (ditto copies).  A txg that changes an object dirties, in its dataset:
the object's dnode block (32 dnodes each), the meta-dnode's six indirect
levels above it, the file's own indirect blocks (128 block pointers each;
none while the file has at most 3 records), the objset block and the
user/group-used objects; a directory change also dirties the directory's
ZAP.  A new dataset starts with the objset, the ZPL master node, delete
queue and SA master ZAPs and its root directory.

So overwriting 4 KiB of a 1 MiB file in a fresh clone makes the clone's
``used`` 128 KiB (one record) + 11 metadata blocks x 2 copies x 4 KiB =
221,184 bytes: the SOURCES figure (~216 KiB), and exactly what zfs-fuse 0.7
showed here.

The ARC caches physical blocks, so clones that read the same unmodified
records share them (page-cache key = the record).
"""
from __future__ import annotations

from ._cowdriver import CowDriver
from .base import Capabilities, register

SECTOR = 4096
DNODES_PER_BLOCK = 32
BP_PER_INDIRECT = 128
MDN_INDIRECT_LEVELS = 6
NBLKPTR = 3
META_COPIES = 2
BASE_META = (("os",), ("uu",), ("gu",), ("zap", "master"), ("zap", "deleteq"), ("zap", "sa"))


def _ceil(a, b):
    return -(-a // b)


@register
class ZfsDriver(CowDriver):
    name = "zfs"
    unit_bytes = SECTOR

    def _configure(self, **opts):
        from ..units import parse_size

        rs = parse_size(opts.pop("recordsize", "128K"), what="recordsize")
        if rs < 512 or rs > (1 << 20) or rs & (rs - 1):
            raise ValueError(f"zfs: recordsize {rs} must be a power of two from 512 to 1 MiB")
        self.recordsize = rs
        super()._configure(**opts)

    # ------------------------------------------------------------ metadata
    def _dirty_meta(self, layer, ino, extents_added=0, records=()):
        owned = layer.owned
        before = len(owned)
        owned.update((("os",), ("uu",), ("gu",)))
        objs = layer.extra.setdefault("obj", {})     # ino -> object number, in creation order
        obj = objs.get(ino)
        if obj is None:
            obj = objs[ino] = len(objs) + 4          # 1-3: master node, delete queue, SA master
        d = obj // DNODES_PER_BLOCK
        owned.add(("dnode", d))
        for lv in range(1, MDN_INDIRECT_LEVELS + 1):
            d //= BP_PER_INDIRECT
            owned.add(("mdn", lv, d))
        node = layer.fs.inodes.get(ino)
        if node is not None and node.is_dir:
            owned.add(("zap", ino))
        if records and node is not None:
            nrec = _ceil(node.size, self.recordsize)
            if nrec > NBLKPTR:
                levels, span = 1, BP_PER_INDIRECT
                while NBLKPTR * span < nrec:
                    levels += 1
                    span *= BP_PER_INDIRECT
                for r in records:
                    idx = r
                    for lv in range(1, levels + 1):
                        idx //= BP_PER_INDIRECT
                        owned.add(("ind", ino, lv, idx))
        self._counters["meta_bytes_written"] += (len(owned) - before) * SECTOR * META_COPIES

    def _on_snapshot(self, src, new):
        if src is None:
            new.owned = set(BASE_META)
            self._dirty_meta(new, new.fs.ROOT_INO)
        else:
            new.extra["obj"] = dict(src.extra.get("obj", {}))
            # the origin snapshot now holds src's blocks; later changes to src are new blocks
            src.extra["held"] = src.extra.get("held", 0) + len(src.owned)
            src.owned = set()

    def _metadata_bytes(self) -> int:
        n = sum(len(x.owned) + x.extra.get("held", 0) for x in self.layers.values())
        return n * SECTOR * META_COPIES

    # ------------------------------------------------------------ data
    def _record_units(self, size: int) -> int:
        if size <= self.recordsize:
            return max(1, _ceil(size, SECTOR))
        return self.recordsize // SECTOR

    def _write_data(self, layer, node, offset, length):
        if length <= 0:
            return
        rs = self.recordsize
        ino = node.ino
        store = self.store
        t = self._own_tree(layer, ino)
        dirty = layer.extra.setdefault("open", {})      # (ino, record) -> extent, this txg
        end = offset + length
        if node.size <= rs:
            recs = [0]
        else:
            recs = list(range(offset // rs, _ceil(end, rs)))
            # a single-block file that grew into records rewrites its block as a full record
            v0 = store.lookup(t, 0, 1)[0]
            if v0 and store.ext_len[store.extent_of(v0)] != rs // SECTOR and 0 not in recs:
                recs.insert(0, 0)
        units = self._record_units(node.size)
        old = store.lookup(t, recs[0], recs[-1] + 1)
        for r in recs:
            v = old[r - recs[0]]
            key = (ino, r)
            e = dirty.get(key)
            if e is not None and v and store.extent_of(v) == e and store.ext_len[e] == units:
                continue                                  # already dirty in this txg
            ext = store.new_extent(units, layer.sid)
            store.map(t, r, r + 1, ext, 0)
            dirty[key] = ext
            if v and e is None:
                self._counters["cow_count"] += 1
                lo, hi = max(offset, r * rs), min(end, (r + 1) * rs)
                if hi - lo < min(rs, node.size - r * rs):
                    self._counters["cow_bytes"] += units * SECTOR
        self._dirty_meta(layer, ino, records=recs)

    def _truncate_data(self, layer, node, old, new):
        if node.ino not in layer.trees:
            return
        t = self._own_tree(layer, node.ino)
        rs = self.recordsize
        if new <= 0:
            self.store.unmap(t, 0, _ceil(old, rs))
        else:
            self.store.unmap(t, _ceil(new, rs), _ceil(old, rs))
        layer.extra.get("open", {}).pop((node.ino, 0), None)
        self._dirty_meta(layer, node.ino)

    def _read_hook(self, layer):
        cache, store, rs = self.page_cache, self.store, self.recordsize

        def hook(node, offset, nbytes):
            t = layer.trees.get(node.ino)
            if t is None:
                return
            bsz = rs if node.size > rs else max(node.size, 1)
            r0, r1 = offset // bsz, _ceil(offset + nbytes, bsz)
            vals = store.lookup(t, r0, r1)
            for i, v in enumerate(vals):
                if v:
                    r = r0 + i
                    lo, hi = max(offset, r * bsz), min(offset + nbytes, (r + 1) * bsz)
                    cache.read(("record", store.extent_of(v)), hi - lo, lo - r * bsz)
        return hook

    # ------------------------------------------------------------ reporting
    def used(self, id) -> int:
        """``zfs get -p used`` of the layer's dataset: blocks born in it and
        still referenced (data and metadata copies)."""
        layer = self._layer(id)
        st = self.store
        n = st.sp.drc.shape[0]
        live = (st.ext_owner[:n] == layer.sid) & (st.sp.drc > 0) & (st.ext_len[:n] > 0)
        data = int(st.ext_len[:n][live].sum()) * SECTOR
        meta = (len(layer.owned) + layer.extra.get("held", 0)) * SECTOR * META_COPIES
        return data + meta

    def _exclusive_bytes(self, layer) -> int:
        return self.used(layer.id)

    def capabilities(self):
        return Capabilities(reproducible_diff=True, native_diff=False, shares_page_cache="block",
                            copy_on_write="record", extra={"recordsize": self.recordsize})

    def status(self):
        return [("Storage Driver", self.name), ("Zpool", "thinp"), ("Zpool Health", "ONLINE"),
                ("Parent Dataset", "thinp/docker"), ("Compression", "off")]

    def metadata(self, id):
        self._layer(id)
        return {"Dataset": f"thinp/docker/{id}", "Mountpoint": f"/var/lib/docker/zfs/graph/{id}"}
