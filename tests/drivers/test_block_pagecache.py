from thinp.drivers.pagecache import PageCache


def test_unbounded_counts_pages_once_per_key():
    c = PageCache()
    assert c.read("a", 10000) == (0, 3)
    assert c.read("a", 4096, offset=4096) == (1, 0)
    assert c.read("b", 1) == (0, 1)
    assert c.cached_bytes == 4 * 4096
    c.drop("a")
    assert c.cached_bytes == 4096


def test_lru_evicts_least_recent():
    c = PageCache(capacity_bytes=2 * 4096)
    c.read("a", 1)
    c.read("b", 1)
    c.read("a", 1)          # a is now most recent
    c.read("c", 1)          # evicts b
    assert c.read("a", 1) == (1, 0)
    assert c.read("b", 1) == (0, 1)
    assert c.evictions >= 1 and len(c) == 2


def test_drop_and_drop_where_forget_only_their_keys_and_evictions_keep_the_index():
    c = PageCache(capacity_bytes=4 * 4096)
    c.read(("a", 1), 3 * 4096)
    c.read(("b", 1), 2 * 4096)                 # evicts one page of ("a", 1)
    assert c.evictions == 1 and c.cached_bytes == 4 * 4096
    c.drop(("a", 1))
    assert c.cached_bytes == 2 * 4096
    assert c.read(("a", 1), 4096) == (0, 1)    # cold again
    c.read(("c", 2), 4096)
    c.drop_where(lambda k: k[1] == 1)
    assert c.cached_bytes == 4096 and c.read(("c", 2), 4096) == (1, 0)
    c.clear()
    assert len(c) == 0 and c.read(("c", 2), 4096) == (0, 1)
