"""dm's btree, writing: shadow spines, insert with dm's split rules, remove
with dm-btree-remove's rebalancing, and whole-tree deletion.

Every function takes the :class:`~thinp.pdata.transaction.TransactionManager`
and a root, and returns the new root (the root moves when it is shadowed).
A :class:`ValueType` says how leaf values hold references: mapping leaves
hold data blocks, the top level of dm-thin's mapping tree holds subtree
roots, the details and space-map trees hold none.

Split rules (``split=`` of :func:`insert`):

* ``"current"`` (the kernel since 2021's "improve btree residency"): a full
  non-root node first moves entries into an unshared sibling with at least
  8 free entries; otherwise it splits two nodes into three, or one into two
  at either end of its parent or beside a shared sibling.  An overwrite of
  an existing key in a full leaf needs no space.
* ``"halves"`` (older kernels, thin_restore 0.9.0, RHEL 7): a full node
  splits into two halves.
A full root always splits beneath itself into two children.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from .block import BTREE_NODE
from .btree import INTERNAL_NODE, LEAF_NODE, Node, calc_max_entries, init_node

if TYPE_CHECKING:   # for annotations only: transaction imports this module for its ref-count tree
    from .transaction import TransactionManager

SPLIT_RULES = ("current", "halves")
SPACE_THRESHOLD = 8


@dataclass
class ValueType:
    """How a tree's leaf values hold references (None: they hold none)."""

    size: int
    inc: Callable | None = None  # inc(values uint8[n, size])
    dec: Callable | None = None
    equal: Callable | None = None  # equal(a bytes, b bytes) -> bool


def u64_values(values: np.ndarray) -> np.ndarray:
    return values.reshape(-1).view("<u8") if values.size else np.zeros(0, dtype=np.uint64)


def block_ref_type(tm: TransactionManager) -> ValueType:
    """Values that are metadata blocks (internal nodes; dm's le64 type)."""

    def inc(values):
        for b in u64_values(values).tolist():
            tm.inc(b)

    def dec(values):
        for b in u64_values(values).tolist():
            tm.dec(b)

    return ValueType(8, inc, dec)


# ----------------------------------------------------------------- node ops
def _node(tm: TransactionManager, b: int) -> Node:
    return Node(tm.write_block(b), b)


def _lower_bound(n: Node, key: int) -> int:
    """dm's lower_bound: the index of the last key <= key, or -1."""
    keys = n.keys()[:n.nr_entries]
    return int(np.searchsorted(keys, np.uint64(key), side="right")) - 1


def _insert_at(n: Node, i: int, key: int, value: bytes | np.ndarray) -> None:
    nr = n.nr_entries
    if nr >= n.max_entries:
        raise AssertionError(f"btree node {n.b} is full")
    keys, vals = n.keys(), n.values_raw()
    keys[i + 1:nr + 1] = keys[i:nr].copy()
    vals[i + 1:nr + 1] = vals[i:nr].copy()
    keys[i] = key
    vals[i] = np.frombuffer(bytes(value), dtype=np.uint8) if not isinstance(value, np.ndarray) else value
    n.nr_entries = nr + 1


def _delete_at(n: Node, i: int) -> None:
    nr = n.nr_entries
    keys, vals = n.keys(), n.values_raw()
    keys[i:nr - 1] = keys[i + 1:nr].copy()
    vals[i:nr - 1] = vals[i + 1:nr].copy()
    n.nr_entries = nr - 1


def _copy_entries(dst: Node, doff: int, src: Node, soff: int, count: int) -> None:
    if count <= 0:
        return
    dst.keys()[doff:doff + count] = src.keys()[soff:soff + count]
    dst.values_raw()[doff:doff + count] = src.values_raw()[soff:soff + count]


def _shift_down(n: Node, count: int) -> None:
    """Erase the first ``count`` entries."""
    nr = n.nr_entries
    k, v = n.keys(), n.values_raw()
    k[0:nr - count] = k[count:nr].copy()
    v[0:nr - count] = v[count:nr].copy()


def _shift_up(n: Node, count: int) -> None:
    """Open ``count`` slots at the front."""
    nr = n.nr_entries
    k, v = n.keys(), n.values_raw()
    k[count:count + nr] = k[0:nr].copy()
    v[count:count + nr] = v[0:nr].copy()


def _value64(n: Node, i: int) -> int:
    return int(n.values64()[i])


def _set_value64(n: Node, i: int, b: int) -> None:
    n.values64()[i] = b


def _inc_children(tm: TransactionManager, n: Node, vt: ValueType) -> None:
    nr = n.nr_entries
    if n.flags & INTERNAL_NODE:
        for b in n.values64()[:nr].tolist():
            tm.inc(b)
    elif vt.inc is not None and nr:
        vt.inc(n.values_raw()[:nr])


def empty(tm: TransactionManager, value_size: int) -> int:
    """dm_btree_empty: a new empty leaf; returns its block."""
    b, blk = tm.new_block(BTREE_NODE)
    init_node(blk, LEAF_NODE, value_size)
    return b


class _Spine:
    """dm's shadow spine: the current node and its parent, shadowed."""

    def __init__(self, tm: TransactionManager):
        self.tm = tm
        self.nodes: list[int] = []
        self.root: int | None = None

    def step(self, b: int, vt: ValueType) -> None:
        if len(self.nodes) == 2:
            self.nodes.pop(0)
        nb, _, inc = self.tm.shadow(b, BTREE_NODE)
        if inc:
            _inc_children(self.tm, _node(self.tm, nb), vt)
        if self.root is None:
            self.root = nb
        self.nodes.append(nb)

    @property
    def current(self) -> int:
        return self.nodes[-1]

    @property
    def parent(self) -> int:
        return self.nodes[0]

    def has_parent(self) -> bool:
        return len(self.nodes) == 2


def _shadow_child(tm: TransactionManager, vt: ValueType, parent: Node, i: int) -> Node:
    nb, _, inc = tm.shadow(_value64(parent, i), BTREE_NODE)
    n = _node(tm, nb)
    if inc:
        _inc_children(tm, n, vt)
    _set_value64(parent, i, nb)
    return n


# ------------------------------------------------------------------- splits
def _redistribute2(left: Node, right: Node) -> None:
    nl, nr = left.nr_entries, right.nr_entries
    total = nl + nr
    tl = total // 2
    tr = total - tl
    if nl < tl:
        d = tl - nl
        _copy_entries(left, nl, right, 0, d)
        _shift_down(right, d)
    elif nl > tl:
        d = nl - tl
        if nr:
            _shift_up(right, d)
        _copy_entries(right, 0, left, tl, d)
    left.nr_entries = tl
    right.nr_entries = tr


def _redistribute3(left: Node, center: Node, right: Node) -> None:
    nl, nr = left.nr_entries, right.nr_entries
    total = nl + nr
    tl = total // 3
    tc = (total - tl) // 2
    tr = total - tl - tc
    if nl < tl:
        short = tl - nl
        _copy_entries(left, nl, right, 0, short)
        _copy_entries(center, 0, right, short, tc)
        _shift_down(right, nr - tr)
    elif nl < tl + tc:
        l2c = nl - tl
        _copy_entries(center, 0, left, tl, l2c)
        _copy_entries(center, l2c, right, 0, tc - l2c)
        _shift_down(right, nr - tr)
    else:
        short = tr - nr
        _shift_up(right, short)
        _copy_entries(right, 0, left, nl - short, short)
        _copy_entries(center, 0, left, tl, nl - tl)
    left.nr_entries = tl
    center.nr_entries = tc
    right.nr_entries = tr


def _new_sibling(tm: TransactionManager, like: Node) -> Node:
    b, blk = tm.new_block(BTREE_NODE)
    blk[:32].view("<u4")[1] = like.flags
    blk[:32].view("<u4")[5] = like.max_entries
    blk[:32].view("<u4")[6] = like.value_size
    return Node(blk, b)


def _split_one_into_two(s: _Spine, pi: int, key: int) -> None:
    tm = s.tm
    left = _node(tm, s.current)
    right = _new_sibling(tm, left)
    _redistribute2(left, right)
    parent = _node(tm, s.parent)
    _insert_at(parent, pi + 1, int(right.keys()[0]), np.array([right.b], dtype="<u8").view(np.uint8))
    if key >= int(right.keys()[0]):
        s.nodes[-1] = right.b


def _split_two_into_three(s: _Spine, vt: ValueType, pi: int, key: int) -> None:
    tm = s.tm
    parent = _node(tm, s.parent)
    if pi == 0:
        mid_index = 1
        left = _node(tm, s.current)
        right = _shadow_child(tm, vt, parent, pi + 1)
    else:
        mid_index = pi
        right = _node(tm, s.current)
        left = _shadow_child(tm, vt, parent, pi - 1)
    middle = _new_sibling(tm, left)
    _redistribute3(left, middle, right)
    parent.keys()[mid_index] = right.keys()[0]
    _insert_at(parent, mid_index, int(middle.keys()[0]), np.array([middle.b], dtype="<u8").view(np.uint8))
    if key < int(middle.keys()[0]):
        s.nodes[-1] = left.b
    elif key < int(right.keys()[0]):
        s.nodes[-1] = middle.b
    else:
        s.nodes[-1] = right.b


def _split_beneath(s: _Spine) -> None:
    tm = s.tm
    pn = _node(tm, s.current)
    nr = pn.nr_entries
    nl = nr // 2
    left = _new_sibling(tm, pn)
    right = _new_sibling(tm, pn)
    _copy_entries(left, 0, pn, 0, nl)
    left.nr_entries = nl
    _copy_entries(right, 0, pn, nl, nr - nl)
    right.nr_entries = nr - nl
    h = pn.blk[:32].view("<u4")
    lk, rk = int(left.keys()[0]), int(right.keys()[0])
    # the root becomes an internal node of two children, whatever it was
    # (the bytes past them stay as they were, as in dm)
    h[1] = INTERNAL_NODE
    h[4] = 2
    h[5] = calc_max_entries(8)
    h[6] = 8
    pn.reset_views()
    pn.keys()[0] = lk
    pn.keys()[1] = rk
    pn.values64()[0] = left.b
    pn.values64()[1] = right.b
    s.nodes[-1] = pn.b  # the spine stays on the root; the caller descends


def _rebalance_left(s: _Spine, vt: ValueType, pi: int, key: int) -> None:
    tm = s.tm
    parent = _node(tm, s.parent)
    left = _shadow_child(tm, vt, parent, pi - 1)
    right = _node(tm, s.current)
    _redistribute2(left, right)
    parent.keys()[pi] = right.keys()[0]
    if key < int(right.keys()[0]):
        s.nodes[-1] = left.b


def _rebalance_right(s: _Spine, vt: ValueType, pi: int, key: int) -> None:
    tm = s.tm
    parent = _node(tm, s.parent)
    right = _shadow_child(tm, vt, parent, pi + 1)
    left = _node(tm, s.current)
    _redistribute2(left, right)
    parent.keys()[pi + 1] = right.keys()[0]
    if key >= int(right.keys()[0]):
        s.nodes[-1] = right.b


def _free_space(tm: TransactionManager, b: int) -> int:
    n = Node(tm.bm.read(b, BTREE_NODE), b)
    return n.max_entries - n.nr_entries


def _rebalance_or_split(s: _Spine, vt: ValueType, pi: int, key: int) -> None:
    tm = s.tm
    parent = _node(tm, s.parent)
    nr_parent = parent.nr_entries
    left_shared = right_shared = False
    if pi > 0:
        lb = _value64(parent, pi - 1)
        left_shared = tm.is_shared(lb)
        if not left_shared and _free_space(tm, lb) >= SPACE_THRESHOLD:
            return _rebalance_left(s, vt, pi, key)
    if pi < nr_parent - 1:
        rb = _value64(parent, pi + 1)
        right_shared = tm.is_shared(rb)
        if not right_shared and _free_space(tm, rb) >= SPACE_THRESHOLD:
            return _rebalance_right(s, vt, pi, key)
    if left_shared or right_shared or nr_parent <= 2 or pi == 0 or pi + 1 == nr_parent:
        return _split_one_into_two(s, pi, key)
    return _split_two_into_three(s, vt, pi, key)


def _has_space_for_insert(n: Node, key: int) -> bool:
    if n.nr_entries == n.max_entries:
        if n.flags & LEAF_NODE:
            i = _lower_bound(n, key)
            return i >= 0 and int(n.keys()[i]) == key
        return False
    return True


def _insert_raw(s: _Spine, root: int, vt: ValueType, key: int, index: int, split: str) -> int:
    """Walk down from ``root``, shadowing and making room; returns the
    index in the current (leaf) node where ``key`` goes or is."""
    tm = s.tm
    i = index
    top = True
    while True:
        s.step(root, vt)
        if s.has_parent() and i >= 0:
            _set_value64(_node(tm, s.parent), i, s.current)
        n = _node(tm, s.current)
        full = (not _has_space_for_insert(n, key)) if split == "current" else n.nr_entries == n.max_entries
        if full:
            if top:
                _split_beneath(s)
            elif split == "current":
                _rebalance_or_split(s, vt, i, key)
            else:
                _split_one_into_two(s, i, key)
            n = _node(tm, s.current)
        i = _lower_bound(n, key)
        if n.flags & LEAF_NODE:
            break
        if i < 0:
            n.keys()[0] = key
            i = 0
        root = _value64(n, i)
        top = False
    if i < 0 or int(n.keys()[i]) != key:
        i += 1
    return i


def _need_insert(n: Node, key: int, i: int) -> bool:
    return i >= n.nr_entries or int(n.keys()[i]) != key


def insert(tm: TransactionManager, root: int, keys: list, value, vt: ValueType, *,
           level_types: list | None = None, split: str = "current") -> tuple[int, bool]:
    """dm_btree_insert_notify over ``len(keys)`` levels: returns (new root,
    inserted).  ``level_types[l]`` is the value type of level ``l``'s
    leaves (subtree roots) for levels above the last.  An overwrite decs
    the old value when it differs."""
    if split not in SPLIT_RULES:
        raise ValueError(f"split rule {split!r}: choose one of {', '.join(SPLIT_RULES)}")
    s = _Spine(tm)
    index = -1
    block = root
    levels = len(keys)
    for level in range(levels - 1):
        lvt = level_types[level] if level_types else block_ref_type(tm)
        index = _insert_raw(s, block, lvt, int(keys[level]), index, split)
        n = _node(tm, s.current)
        if _need_insert(n, int(keys[level]), index):
            new_tree = empty(tm, vt.size)
            _insert_at(n, index, int(keys[level]), np.array([new_tree], dtype="<u8").view(np.uint8))
        block = _value64(n, index)
    index = _insert_raw(s, block, vt, int(keys[-1]), index, split)
    n = _node(tm, s.current)
    val = np.frombuffer(bytes(value), dtype=np.uint8) if not isinstance(value, np.ndarray) else value
    if _need_insert(n, int(keys[-1]), index):
        _insert_at(n, index, int(keys[-1]), val)
        inserted = True
    else:
        old = n.values_raw()[index]
        if vt.dec is not None and not (vt.equal is not None and vt.equal(old.tobytes(), val.tobytes())):
            vt.dec(old[None, :].copy())
        n.values_raw()[index] = val
        inserted = False
    return s.root, inserted


def overwrite_in_place(tm: TransactionManager, root: int, key: int, value: np.ndarray, *,
                       split: str = "current") -> bool:
    """:func:`insert` of a key already in a one-level tree whose values
    hold no references, where dm's insert would only descend: every node on
    the path this transaction's and unshared, no internal node full (nor
    its first key above ``key``), and in the halves rule the leaf not full
    either.  Then the value is written in place -- the bytes the insert
    writes -- and True is returned; else nothing is done (False)."""
    b = root
    while True:
        if not tm.txn[b] or int(tm.count[b]) != 1:
            return False
        n = _node(tm, b)
        full = n.nr_entries == n.max_entries
        i = _lower_bound(n, key)
        if n.flags & LEAF_NODE:
            if i < 0 or int(n.keys()[i]) != key or (full and split == "halves"):
                return False
            n.values_raw()[i] = value
            return True
        if full or i < 0:
            return False
        b = _value64(n, i)


# ------------------------------------------------------------------- remove
def _merge_threshold(n: Node) -> int:
    return n.max_entries // 3


def _shift(left: Node, right: Node, count: int) -> None:
    """Move ``count`` entries from the end of left to the front of right
    (negative: from the front of right to the end of left)."""
    nl, nr = left.nr_entries, right.nr_entries
    if count == 0:
        return
    if count > 0:
        _shift_up(right, count)
        _copy_entries(right, 0, left, nl - count, count)
    else:
        c = -count
        _copy_entries(left, nl, right, 0, c)
        _shift_down(right, c)
    left.nr_entries = nl - count
    right.nr_entries = nr + count


class _Child:
    __slots__ = ("index", "n")

    def __init__(self, index, n):
        self.index = index
        self.n = n


def _init_child(tm, vt, parent: Node, index: int) -> _Child:
    return _Child(index, _shadow_child(tm, vt, parent, index))


def __rebalance2(tm, parent: Node, l: _Child, r: _Child) -> None:
    left, right = l.n, r.n
    nl, nr = left.nr_entries, right.nr_entries
    if nl + nr < 2 * _merge_threshold(left) + 1:
        _copy_entries(left, nl, right, 0, nr)
        left.nr_entries = nl + nr
        _delete_at(parent, r.index)
        tm.dec(right.b)  # its children are still referenced, by left now
    else:
        target_left = (nl + nr) // 2
        _shift(left, right, nl - target_left)
        parent.keys()[r.index] = right.keys()[0]


def _rebalance2(tm, vt, parent: Node, left_index: int) -> None:
    l = _init_child(tm, vt, parent, left_index)
    r = _init_child(tm, vt, parent, left_index + 1)
    __rebalance2(tm, parent, l, r)


def _delete_center_node(tm, parent, l, c, r) -> None:
    left, center, right = l.n, c.n, r.n
    nl, nc, nr = left.nr_entries, center.nr_entries, right.nr_entries
    shift = min(left.max_entries - nl, nc)
    _copy_entries(left, nl, center, 0, shift)
    left.nr_entries = nl + shift
    if shift != nc:
        shift = nc - shift
        _shift_up(right, shift)
        _copy_entries(right, 0, center, left.nr_entries - nl, shift)
        right.nr_entries = nr + shift
    parent.keys()[r.index] = right.keys()[0]
    _delete_at(parent, c.index)
    r.index -= 1
    tm.dec(center.b)
    __rebalance2(tm, parent, l, r)


def _redistribute3_remove(parent, l, c, r) -> None:
    left, center, right = l.n, c.n, r.n
    nl, nc, nr = left.nr_entries, center.nr_entries, right.nr_entries
    total = nl + nc + nr
    target_right = total // 3
    remainder = 1 if target_right * 3 != total else 0
    target_left = target_right + remainder
    if nl < nr:
        s = nl - target_left
        if s < 0 and nc < -s:
            _shift(left, center, -nc)
            s += nc
            _shift(left, right, s)
            nr += s
        else:
            _shift(left, center, s)
        _shift(center, right, target_right - nr)
    else:
        s = target_right - nr
        if s > 0 and nc < s:
            _shift(center, right, nc)
            s -= nc
            _shift(left, right, s)
            nl -= s
        else:
            _shift(center, right, s)
        _shift(left, center, nl - target_left)
    parent.keys()[c.index] = center.keys()[0]
    parent.keys()[r.index] = right.keys()[0]


def _rebalance3(tm, vt, parent: Node, left_index: int) -> None:
    l = _init_child(tm, vt, parent, left_index)
    c = _init_child(tm, vt, parent, left_index + 1)
    r = _init_child(tm, vt, parent, left_index + 2)
    total = l.n.nr_entries + c.n.nr_entries + r.n.nr_entries
    if total < _merge_threshold(l.n) * 4 + 1:
        _delete_center_node(tm, parent, l, c, r)
    else:
        _redistribute3_remove(parent, l, c, r)


def _rebalance_children(s: _Spine, vt: ValueType, key: int) -> bool:
    """False when ``key`` is not in the tree (dm's -ENODATA)."""
    tm = s.tm
    n = _node(tm, s.current)
    if n.nr_entries == 1:
        b = _value64(n, 0)
        child = Node(tm.bm.read(b, BTREE_NODE), b)
        if tm.is_shared(b):
            # the copy in n references the child's children too
            _inc_children(tm, child, vt)
        n.blk[:] = child.blk
        n.reset_views()
        tm.dec(b)
        return True
    i = _lower_bound(n, key)
    if i < 0:
        return False
    has_left = i > 0
    has_right = i < n.nr_entries - 1
    if not has_left:
        _rebalance2(tm, vt, n, i)
    elif not has_right:
        _rebalance2(tm, vt, n, i - 1)
    else:
        _rebalance3(tm, vt, n, i - 1)
    return True


def _remove_descend(s: _Spine, vt: ValueType, root: int, key: int, index: int) -> Node | None:
    """The descent dm's remove_raw and remove_nearest share: the spine
    shadowed and each internal node's children rebalanced for ``key``, down
    to its leaf (returned); None when an internal node has no child for it."""
    tm = s.tm
    i = index
    while True:
        s.step(root, vt)
        if s.has_parent():
            _set_value64(_node(tm, s.parent), i, s.current)
        n = _node(tm, s.current)
        if n.flags & LEAF_NODE:
            return n
        if not _rebalance_children(s, vt, key):
            return None
        n = _node(tm, s.current)
        if n.flags & LEAF_NODE:
            return n
        i = _lower_bound(n, key)
        root = _value64(n, i)


def _remove_raw(s: _Spine, vt: ValueType, root: int, key: int, index: int) -> int | None:
    n = _remove_descend(s, vt, root, key, index)
    return None if n is None else _do_leaf(n, key)


def _do_leaf(n: Node, key: int) -> int | None:
    i = _lower_bound(n, key)
    if i < 0 or i >= n.nr_entries or int(n.keys()[i]) != key:
        return None
    return i


def remove(tm: TransactionManager, root: int, keys: list, vt: ValueType, *,
           level_types: list | None = None) -> tuple[int, bool]:
    """dm_btree_remove: returns (new root, removed).  Nothing is removed
    when the key is absent (the path may still have been shadowed and
    rebalanced, as in dm)."""
    s = _Spine(tm)
    index = 0
    levels = len(keys)
    block = root
    for level in range(levels):
        lvt = vt if level == levels - 1 else (level_types[level] if level_types else block_ref_type(tm))
        r = _remove_raw(s, lvt, block, int(keys[level]), index)
        if r is None:
            return s.root, False
        index = r
        n = _node(tm, s.current)
        if level != levels - 1:
            block = _value64(n, index)
            continue
        if vt.dec is not None:
            vt.dec(n.values_raw()[index:index + 1].copy())
        _delete_at(n, index)
    return s.root, True


def lookup_next(tm: TransactionManager, root: int, key: int) -> int | None:
    """dm_btree_lookup_next on a one-level tree: the least key >= ``key``,
    or None (read-only)."""
    b = root
    while True:
        n = Node(tm.bm.read(b, BTREE_NODE), b)
        keys = n.keys()[:n.nr_entries]
        if n.flags & LEAF_NODE:
            i = int(np.searchsorted(keys, np.uint64(key), side="left"))
            return int(keys[i]) if i < len(keys) else None
        # the last child whose first key is <= key may hold none >= key:
        # then the next child's first key is the answer
        i = max(_lower_bound(n, key), 0)
        for j in range(i, min(i + 2, n.nr_entries)):
            got = lookup_next(tm, _value64(n, j), key)
            if got is not None:
                return got
        return None


def _remove_nearest(s: _Spine, vt: ValueType, root: int, key: int) -> int | None:
    """dm's remove_nearest: the spine shadowed and rebalanced for ``key``;
    the leaf index of the last key <= key (-1: none), None when an internal
    node has no child for it."""
    n = _remove_descend(s, vt, root, key, 0)
    return None if n is None else _lower_bound(n, key)


def remove_leaves_range(tm: TransactionManager, root: int, begin: int, end: int, vt: ValueType) -> tuple[int, int]:
    """The loop of dm's __remove_range over a one-level tree at ``root``:
    dm_btree_lookup_next, then dm_btree_remove_leaves (remove_one after
    remove_one, each its own descent, until one finds no key in
    [begin, end); that descent still shadows and rebalances).  Returns (new
    root, entries removed)."""
    total = 0
    while begin < end:
        k = lookup_next(tm, root, begin)
        if k is None or k >= end:
            break
        begin = k
        while True:
            s = _Spine(tm)
            i = _remove_nearest(s, vt, root, begin)
            root = s.root
            if i is None:
                break
            n = _node(tm, s.current)
            i = max(i, 0)
            if i >= n.nr_entries:
                break
            k = int(n.keys()[i])
            if not begin <= k < end:
                break
            if vt.dec is not None:
                vt.dec(n.values_raw()[i:i + 1].copy())
            _delete_at(n, i)
            total += 1
            begin = k + 1
    return root, total


# ------------------------------------------------------------------- delete
def delete(tm: TransactionManager, root: int, levels: int, vt: ValueType) -> None:
    """dm_btree_del: drop one reference to the tree at ``root``; nodes
    whose count reaches 0 drop their children (subtrees at the lower
    levels, values through ``vt.dec`` at the last)."""
    stack = [(root, 0)]
    while stack:
        b, level = stack.pop()
        if tm.is_shared(b):
            tm.dec(b)
            continue
        n = Node(tm.bm.read(b, BTREE_NODE), b)
        nr = n.nr_entries
        if n.flags & INTERNAL_NODE:
            for c in n.values64()[:nr].tolist():
                stack.append((c, level))
        elif level < levels - 1:
            for c in n.values64()[:nr].tolist():
                stack.append((c, level + 1))
        elif vt.dec is not None and nr:
            vt.dec(n.values_raw()[:nr].copy())
        tm.dec(b)
