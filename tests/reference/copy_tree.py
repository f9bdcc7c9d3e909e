"""The obviously-correct per-path tree copy :meth:`Filesystem.clone_tree`
must match: one public call per entry (``mkdir``, ``create``, ``write``,
``symlink``, ``mknod``, ``link``, ``setxattr``), paths resolved every time.
This was ``thinp.drivers.union.copy_dir`` before the bulk clone."""
from __future__ import annotations

import stat as _stat

import numpy as np

BLOCK = 4096


def copy_tree_per_path(fs, src: str, dst: str) -> None:
    links: dict[int, str] = {}
    snode = fs.inode(src, follow=False)
    fs.mkdir(dst, _stat.S_IMODE(snode.mode), uid=snode.uid, gid=snode.gid)
    stack = [(src, dst, snode)]
    while stack:
        s, d, node = stack.pop()
        _xattrs(fs, d, node.xattrs)
        for name, ino in node.entries.items():
            c = fs.inodes[ino]
            sp, dp = s + "/" + name, d + "/" + name
            m = c.mode
            if _stat.S_ISDIR(m):
                fs.mkdir(dp, _stat.S_IMODE(m), uid=c.uid, gid=c.gid)
                stack.append((sp, dp, c))
                continue
            if c.nlink > 1 and c.ino in links:
                fs.link(links[c.ino], dp)
                continue
            if _stat.S_ISREG(m):
                fs.create(dp, _stat.S_IMODE(m), uid=c.uid, gid=c.gid)
                if c.size:
                    if fs.payload:
                        fs.write(dp, 0, fs.read(sp, 0, c.size))
                    else:
                        fs.write(dp, 0, c.size)
                        dn = fs.inode(dp)
                        if c.stamps is None:
                            dn.stamps = None
                        else:
                            n = (c.size + BLOCK - 1) // BLOCK
                            new = np.zeros(max(n, 1), dtype=np.uint64)
                            k = min(n, len(c.stamps))
                            new[:k] = c.stamps[:k]
                            dn.stamps = new
            elif _stat.S_ISLNK(m):
                fs.symlink(c.target, dp, uid=c.uid, gid=c.gid)
            else:
                fs.mknod(dp, m, c.rdev, uid=c.uid, gid=c.gid)
            _xattrs(fs, dp, c.xattrs)
            if c.nlink > 1:
                links[c.ino] = dp


def _xattrs(fs, p, xattrs) -> None:
    for k, v in (xattrs or {}).items():
        fs.setxattr(p, k, v if isinstance(v, bytes) else str(v).encode(), follow_symlinks=False)
