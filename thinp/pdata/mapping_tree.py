"""dm-thin's two-level mapping tree, updated in numba: the public names.

For callers that keep their own state arrays (thin/'s pool and its replay
kernels, which call these from their own numba code).  The arrays each
kernel takes, what it returns and its status codes are documented where it
is written, :mod:`thinp.pdata._btree_kernels`; every result is
byte-identical to the Python btree (:mod:`thinp.pdata.btree_write`), which
the tests in ``tests/pdata`` check.

insert_mapping      dm_btree_insert of (dev, vblock) -> value
insert_mapping_cached  the same for a caller inserting many in a row: the
                    leaf an insert would only descend to is changed in
                    place and kept for the next keys (scratch passed in)
remove_mapping_scratch  remove_mapping with its spine scratch passed in
lookup_mapping      (value, found) of (dev, vblock)
write_blocks        dm-thin's write path for a batch of vblocks of one device
                    (provision unmapped, break sharing of shared), in order
remove_mapping      dm_btree_remove of (dev, vblock)
remove_range        dm_thin_remove_range of [begin, end) of one device
                    (dm's __remove_range: the top-level entry out and back
                    in, the subtree's range by dm_btree_lookup_next and
                    dm_btree_remove_leaves)
remove_range_scratch  the same with its scratch passed in
remove_leaves_range that loop alone over one device's subtree
update_ref_counts   a batch of set/remove on a space map's ref-count tree
inc_data            one more reference on a data block (use it, not
                    ``dcount[p] += 1``: the space map's commit visits only
                    the bitmaps flagged as changed)
shadow_data_bitmap  dm's shadow of a data bitmap at the first count change
                    in it this transaction, for a caller allocating data
                    blocks (``dst``: DiskSpaceMap.kernel_state()); every
                    kernel here that changes a data count does it too
data_bitmap_shadowed  the same, inlined, for a caller that remembers the
                    bitmap it shadowed last (NO_BITMAP: none yet)
nr_used             blocks in use now, from a space map's ``committed`` array
                    (its running count; no scan)
locate_leaf         a read-only descent to the leaf where (dev, vblock) is or
                    would go, and whether insert_mapping_cached can be
                    handed it: call it some requests ahead of a random
                    insert (apply_log does, 16 ahead)
fetch_leaf          prefetch what an insert into that leaf reads, in two
                    stages (its header and the entry a gapless leaf would
                    hold; then, unless it is gapless, all its entries)
subtree_height      a device's subtree root (when dm's insert would only
                    descend the top level to it) and its internal levels
leaf_merge          new keys (sorted, none there yet) into a leaf with room,
                    in one pass: the bytes inserting them one by one writes
node_value          a node's value at an index (an internal node's child)
descend_hinted      locate_leaf's descent below that root, trying a
                    recorded path (an index a level) before each search:
                    always the descent dm's insert makes, two loads a level
                    when the path still holds (HINT_BITS: the size of a
                    table of paths by key range a caller may keep)

The one walk of dm's btrees (:mod:`thinp.pdata._walk_kernels`), for readers
that do their own work on each leaf (thin_check's tallies, the index fill):

Walk, new_walk      a walk's arrays (optionally counting references in
                    ``seen`` and entries below each node in ``under``)
start, next_leaf    put it at a root; step it to the next leaf in key
                    order (a block; 0 at the end; WALK_* < 0 on damage)
leaf_fresh          whether that leaf was reached by its first reference
W_VERIFY, W_REVISIT its options: check checksums; walk shared nodes again
"""
from __future__ import annotations

from ._btree_kernels import (  # noqa: F401  (re-exported)
    HINT_BITS,
    NO_BITMAP,
    PREFETCH_AHEAD,
    SPACE_THRESHOLD,
    data_bitmap_shadowed,
    descend_hinted,
    fetch_leaf,
    fetch_parked,
    inc_data,
    leaf_merge,
    leaf_merge_parked,
    leaf_park,
    insert_mapping,
    insert_mapping_cached,
    locate_leaf,
    lookup_mapping,
    node_value,
    nr_used,
    remove_mapping,
    remove_leaves_range,
    remove_range,
    remove_range_scratch,
    remove_mapping_scratch,
    shadow_data_bitmap,
    subtree_height,
    update_ref_counts,
    write_blocks,
)
from ._walk_kernels import (  # noqa: F401  (re-exported)
    W_REVISIT,
    W_VERIFY,
    WALK_BAD_BLOCK,
    WALK_BAD_CSUM,
    WALK_BAD_NODE,
    WALK_BAD_ORDER,
    WALK_LOOP,
    WALK_TOO_DEEP,
    WALK_TOO_MANY,
    Walk,
    leaf_fresh,
    new_walk,
    next_leaf,
    start,
)

__all__ = ["HINT_BITS", "NO_BITMAP", "PREFETCH_AHEAD", "data_bitmap_shadowed", "descend_hinted", "fetch_leaf",
           "inc_data", "insert_mapping", "insert_mapping_cached", "locate_leaf", "lookup_mapping", "nr_used",
           "remove_mapping", "remove_leaves_range", "remove_range", "remove_range_scratch", "remove_mapping_scratch",
           "shadow_data_bitmap", "subtree_height", "update_ref_counts", "write_blocks", "W_REVISIT", "W_VERIFY",
           "WALK_BAD_BLOCK", "WALK_BAD_CSUM", "WALK_BAD_NODE", "WALK_BAD_ORDER", "WALK_LOOP", "WALK_TOO_DEEP",
           "WALK_TOO_MANY", "Walk", "leaf_fresh", "new_walk", "next_leaf", "start"]
