"""An obviously correct model of a directory tree, for the stateful tests.

Nodes are plain dicts.  Symlinks in the tests point at names that never
exist, so following one always ends in ENOENT and the model never has to
resolve a link.
"""
from __future__ import annotations

import errno


class RefError(Exception):
    def __init__(self, code):
        super().__init__(errno.errorcode[code])
        self.errno = code


def _split(path):
    return [p for p in path.split("/") if p]


class File:
    def __init__(self):
        self.data = bytearray()
        self.nlink = 1
        self.xattrs = {}


class Dir:
    def __init__(self):
        self.children = {}
        self.xattrs = {}


class Link:
    def __init__(self, target):
        self.target = target
        self.nlink = 1
        self.xattrs = {}


class RefFS:
    def __init__(self, extra_root_entries=()):
        self.root = Dir()
        for name in extra_root_entries:
            self.root.children[name] = Dir()

    def _walk(self, parts, follow_last=True):
        node = self.root
        for i, name in enumerate(parts):
            if not isinstance(node, Dir):
                raise RefError(errno.ENOTDIR)
            if name not in node.children:
                raise RefError(errno.ENOENT)
            node = node.children[name]
            if isinstance(node, Link) and (follow_last or i < len(parts) - 1):
                raise RefError(errno.ENOENT)   # dangling by construction
        return node

    def _parent(self, path):
        parts = _split(path)
        parent = self._walk(parts[:-1])
        if not isinstance(parent, Dir):
            raise RefError(errno.ENOTDIR)
        return parent, parts[-1]

    def mkdir(self, path):
        parent, name = self._parent(path)
        if name in parent.children:
            raise RefError(errno.EEXIST)
        parent.children[name] = Dir()

    def create(self, path):
        parent, name = self._parent(path)
        if name in parent.children:
            raise RefError(errno.EEXIST)
        parent.children[name] = File()

    def symlink(self, target, path):
        parent, name = self._parent(path)
        if name in parent.children:
            raise RefError(errno.EEXIST)
        parent.children[name] = Link(target)

    def write(self, path, offset, data):
        try:
            node = self._walk(_split(path))
        except RefError as e:
            if e.errno != errno.ENOENT:
                raise
            self.create(path)
            node = self._walk(_split(path))
        if isinstance(node, Dir):
            raise RefError(errno.EISDIR)
        if not data:
            return
        end = offset + len(data)
        if len(node.data) < end:
            node.data.extend(bytes(end - len(node.data)))
        node.data[offset:end] = data

    def truncate(self, path, size):
        node = self._walk(_split(path))
        if isinstance(node, Dir):
            raise RefError(errno.EISDIR)
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))

    def read(self, path):
        node = self._walk(_split(path))
        if isinstance(node, Dir):
            raise RefError(errno.EISDIR)
        return bytes(node.data)

    def unlink(self, path):
        parent, name = self._parent(path)
        if name not in parent.children:
            raise RefError(errno.ENOENT)
        node = parent.children[name]
        if isinstance(node, Dir):
            raise RefError(errno.EISDIR)
        del parent.children[name]
        node.nlink -= 1

    def rmdir(self, path):
        parent, name = self._parent(path)
        if name not in parent.children:
            raise RefError(errno.ENOENT)
        node = parent.children[name]
        if not isinstance(node, Dir):
            raise RefError(errno.ENOTDIR)
        if node.children:
            raise RefError(errno.ENOTEMPTY)
        del parent.children[name]

    def link(self, src, dst):
        node = self._walk(_split(src), follow_last=False)
        if isinstance(node, Dir):
            raise RefError(errno.EPERM)
        parent, name = self._parent(dst)
        if name in parent.children:
            raise RefError(errno.EEXIST)
        parent.children[name] = node
        node.nlink += 1

    def rename(self, src, dst):
        sparent, sname = self._parent(src)
        if sname not in sparent.children:
            raise RefError(errno.ENOENT)
        node = sparent.children[sname]
        dparent, dname = self._parent(dst)
        if isinstance(node, Dir):
            # dst's parent may not be node or below it
            stack = [node]
            while stack:
                d = stack.pop()
                if d is dparent:
                    raise RefError(errno.EINVAL)
                stack.extend(c for c in d.children.values() if isinstance(c, Dir))
        old = dparent.children.get(dname)
        if old is node:
            return
        if old is not None:
            if isinstance(old, Dir) and not isinstance(node, Dir):
                raise RefError(errno.EISDIR)
            if isinstance(node, Dir) and not isinstance(old, Dir):
                raise RefError(errno.ENOTDIR)
            if isinstance(old, Dir) and old.children:
                raise RefError(errno.ENOTEMPTY)
            if not isinstance(old, Dir):
                old.nlink -= 1
        del sparent.children[sname]
        dparent.children[dname] = node

    def setxattr(self, path, name, value):
        self._walk(_split(path)).xattrs[name] = bytes(value)

    def removexattr(self, path, name):
        node = self._walk(_split(path))
        if name not in node.xattrs:
            raise RefError(errno.ENODATA)
        del node.xattrs[name]

    def listxattr(self, path):
        return sorted(self._walk(_split(path)).xattrs)

    def tree(self):
        """{path: (kind, size_or_target, nlink)} of every entry."""
        out = {}

        def rec(d, prefix):
            for name, c in d.children.items():
                p = prefix + "/" + name
                if isinstance(c, Dir):
                    nsub = sum(isinstance(x, Dir) for x in c.children.values())
                    out[p] = ("d", None, 2 + nsub)
                    rec(c, p)
                elif isinstance(c, File):
                    out[p] = ("f", bytes(c.data), c.nlink)
                else:
                    out[p] = ("l", c.target, c.nlink)

        rec(self.root, "")
        return out
