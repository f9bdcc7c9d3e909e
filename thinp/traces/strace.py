"""Read ``strace -f -tt -y`` output into file operations a mounted view can replay.

Capture a container workload with ``thinp capture`` (:mod:`thinp.validate.capture`,
a real overlay mount of the image, as root), or by hand with::

    strace -f -tt -y -s 64 -o trace.txt \\
      -e trace=%file,%desc,write,pwrite64,pwritev,truncate,ftruncate,fsync,fdatasync,ioctl CMD

then ``ops = read(path)`` and ``replay(ops, view)``.  ``-s 64`` keeps xattr
names and minimal ACLs whole; ``-s 0`` traces (the shared dpkg fixture) read
too, with ACL modes inferred (below).

What the reader keeps
---------------------
Only syscalls that succeeded and change the file tree become :class:`FileOp`
rows, in trace order (``-f`` interleaves processes; an ``<unfinished ...>``
call is completed by its ``<... resumed>`` line and placed at the resumed
line, which is when the kernel finished it):

==============  ==========================================================
``kind``        from
==============  ==========================================================
``open``        open/openat/openat2/creat with O_CREAT, O_TRUNC, O_WRONLY or O_RDWR
                (an open for write is what triggers copy-up on aufs/overlay)
``write``       write/writev/pwrite64/pwritev/copy_file_range/sendfile:
                ``size`` bytes at ``offset`` (``-1``: at the end, O_APPEND)
``truncate``    truncate/ftruncate
``fallocate``   fallocate that may grow the file (``size``: offset + length; not
                with FALLOC_FL_KEEP_SIZE or the hole/range modes)
``rename``      rename/renameat/renameat2 (``path`` -> ``path2``)
``unlink``      unlink/unlinkat
``rmdir``       rmdir, unlinkat(AT_REMOVEDIR)
``mkdir``       mkdir/mkdirat
``mknod``       mknod/mknodat
``exchange``    renameat2(RENAME_EXCHANGE) (``path`` <-> ``path2``)
``chmod``       chmod/fchmod/fchmodat/fchmodat2, and the mode an ACL sets (below)
``chown``       chown/lchown/fchown/fchownat (``uid``/``gid``, -1 keeps)
``setxattr``    setxattr/lsetxattr/fsetxattr of a named attribute (``path2``
                the name, ``data`` the value, or ``size`` zero bytes when elided)
``symlink``     symlink/symlinkat (``path2`` is the target text)
``link``        link/linkat (``path`` -> new name ``path2``)
``clone``       a FICLONE ioctl that succeeded (``path`` gets ``path2``'s bytes)
``utime``       utimensat/utimes/futimesat, on a path or an fd (a setattr:
                copies up on overlay)
``fsync``       fsync/fdatasync
==============  ==========================================================

How real tools set modes
------------------------
coreutils' ``cp -p``/``cp -a`` and ``mv`` across directories set the mode by
writing the ``system.posix_acl_access`` xattr.  A minimal ACL (28 bytes: the
user, group and other entries) is exactly the permission bits, so it becomes
a ``chmod`` (flag :data:`CHMOD_ACL`: the set-id and sticky bits stay).  When
strace printed the value it is decoded; when ``-s 0`` elided it (and the
name), a 28-byte value takes the mode the same process has just ``stat``-ed
on its source (flag :data:`MODE_INFERRED`; :attr:`Trace.nr_modes_inferred`
and the replay's ``modes_inferred`` count them).  A longer ACL decodes to
the mode its mask gives, and is kept as the xattr too, as the kernel keeps it.

Files made as modern tools make them
------------------------------------
An ``O_TMPFILE`` open makes an unnamed file: what is written to (or set on)
its descriptor is held back until ``linkat(fd, "", ..., AT_EMPTY_PATH)`` (or
a ``linkat`` of ``/proc/self/fd/N``) names it, when it becomes an exclusive
create followed by those operations; the descriptor then keeps writing to
that name.  ``copy_file_range`` and ``sendfile`` are writes of the bytes they
returned; a failing ``FICLONE`` is just a failed call (the tool then copies).

Paths are absolute inside the container.  A relative path is joined to its
``dirfd``'s ``-y`` annotation, or to the process's working directory, learnt
from ``AT_FDCWD</dir>`` annotations, ``chdir`` and ``fchdir``.  File-descriptor
calls use the fd's ``-y`` annotation (the path the kernel resolved, symlinks
followed); a descriptor whose file was deleted (`` (deleted)``) or that points
at a pipe, socket, ``/proc``, ``/sys``, ``/dev`` or outside the container
(``/outside/...``) is skipped.  File positions are tracked per open file
description (``dup``/``dup2``/``fcntl(F_DUPFD)`` share one; ``read``, ``write``
and ``lseek`` move it); a descriptor inherited across an untraced ``clone`` is
matched to the newest open description of the same path.

:attr:`Trace.stats` records, for every path the trace ``stat``\\ s or opens
successfully before creating it, the ``(st_mode, st_size)`` the kernel
reported: what the workload assumed already existed (for example the
``.deb`` files copied into the container before tracing started).
"""
from __future__ import annotations

import errno
import gzip
import os
import re
import stat as _stat
from dataclasses import dataclass, field
from typing import Iterable, Iterator

__all__ = ["FileOp", "Trace", "parse", "read", "replay", "SKIP_PREFIXES", "CHMOD_ACL", "MODE_INFERRED",
           "decode_acl_mode"]

#: path prefixes that are not part of the container's filesystem tree
SKIP_PREFIXES = ("/outside", "/proc", "/sys", "/dev")

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
_FLAG_BITS = {"O_RDONLY": 0, "O_WRONLY": 0o1, "O_RDWR": 0o2, "O_CREAT": 0o100, "O_EXCL": 0o200,
              "O_NOCTTY": 0o400, "O_TRUNC": 0o1000, "O_APPEND": 0o2000, "O_NONBLOCK": 0o4000,
              "O_DIRECTORY": 0o200000, "O_NOFOLLOW": 0o400000, "O_CLOEXEC": 0o2000000,
              "O_TMPFILE": 0o20200000, "O_PATH": 0o10000000}
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_TMPFILE = 0o20200000

#: ``FileOp.flags`` of a ``chmod`` that an ACL write made: the set-id and sticky bits stay
CHMOD_ACL = 2
#: ``FileOp.flags`` of a ``chmod`` whose mode was inferred from the source's ``stat``
MODE_INFERRED = 4
_ACL_ACCESS = "system.posix_acl_access"
_MINIMAL_ACL_BYTES = 28


@dataclass(slots=True)
class FileOp:
    """One file-tree change (see the module docstring for ``kind``)."""

    kind: str
    path: str
    path2: str = ""
    offset: int = 0
    size: int = 0
    mode: int = -1
    uid: int = -1
    gid: int = -1
    flags: int = 0
    pid: int = 0
    lineno: int = 0
    data: bytes = b""


@dataclass
class Trace:
    """What :func:`parse` found: ``ops`` to replay, ``stats`` the pre-existing
    paths the trace observed, and counts of what it saw and skipped."""

    ops: list[FileOp] = field(default_factory=list)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    nr_lines: int = 0
    nr_syscalls: int = 0
    nr_failed: int = 0
    nr_skipped: int = 0
    nr_modes_inferred: int = 0

    def __iter__(self) -> Iterator[FileOp]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)


# ------------------------------------------------------------------ lexing
_HEAD = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(?:(\d\d:\d\d:\d\d(?:\.\d+)?)\s+)?(.*)$")
_HEAD_NOPID = re.compile(r"^(?:(\d\d:\d\d:\d\d(?:\.\d+)?)\s+)?(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$")
_RET = re.compile(r"\)\s+=\s+(-?\d+|\?|0x[0-9a-fA-F]+)(?:<(.*?)>(\(deleted\))?)?(?:\s+([A-Z][A-Z0-9_]*)(?:\s+\(.*\))?)?"
                  r"(?:\s+\(.*\))?\s*$")
_FD = re.compile(r"^(-?\d+|AT_FDCWD)(?:<(.*)>(\(deleted\))?)?$", re.S)
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
_ESC_MAP = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a", "b": "\b",
            "\\": "\\", '"': '"', "'": "'"}


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out = bytearray()
    i = 0
    for m in _ESC.finditer(s):
        out += s[i:m.start()].encode("utf-8", "surrogateescape")
        e = m.group(1)
        if e[0] == "x" and len(e) == 3:
            out.append(int(e[1:], 16))
        elif e[0] in "01234567":
            out.append(int(e, 8) & 0xFF)
        else:
            out += _ESC_MAP.get(e, e).encode()
        i = m.end()
    out += s[i:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def _split_args(s: str) -> list[str]:
    """Top-level comma split, respecting quotes and ()[]{}<> nesting."""
    args, depth, i, n = [], 0, 0, len(s)
    start = 0
    while i < n:
        c = s[i]
        if c == '"':
            i += 1
            while i < n and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
        elif c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == "/" and s.startswith("/*", i):
            j = s.find("*/", i + 2)
            i = n if j < 0 else j + 1
        elif c == "," and depth == 0:
            args.append(s[start:i].strip())
            start = i + 1
        i += 1
    last = s[start:].strip()
    if last or args:
        args.append(last)
    return args


def _str_arg(tok: str) -> str | None:
    """The string of a quoted argument (``"..."``), or None (NULL, pointer)."""
    tok = tok.strip()
    if not tok.startswith('"'):
        return None
    end = tok.rfind('"')
    return _unescape(tok[1:end])


def _fd_arg(tok: str) -> tuple[int | None, str | None]:
    m = _FD.match(tok.strip())
    if not m:
        return None, None
    fd = -100 if m.group(1) == "AT_FDCWD" else int(m.group(1))
    ann = m.group(2)
    if ann is None:
        return fd, None
    ann = _unescape(ann)
    # strace 6 prints "<path>(deleted)", older ones "<path (deleted)>"
    return fd, (ann + " (deleted)" if m.group(3) else ann)


def _int_arg(tok: str, default: int = 0) -> int:
    tok = tok.strip()
    if tok.startswith("[") and tok.endswith("]"):
        tok = tok[1:-1]
    try:
        return int(tok, 0) if not (tok.startswith("0") and tok[1:].isdigit()) else int(tok, 8)
    except ValueError:
        return default


def _flags_arg(tok: str) -> int:
    v = 0
    for part in tok.split("|"):
        part = part.strip()
        if part in _FLAG_BITS:
            v |= _FLAG_BITS[part]
        elif part[:1].isdigit():
            v |= _int_arg(part)
    return v


def _mode_arg(tok: str) -> int:
    tok = tok.strip()
    if "|" in tok or tok.startswith("S_I"):   # mknod: S_IFCHR|0600
        v = 0
        for part in tok.split("|"):
            part = part.strip()
            if part.startswith("S_IF"):
                v |= getattr(_stat, part, 0)
            else:
                v |= _int_arg(part)
        return v
    return int(tok, 8) if tok[:1].isdigit() else 0


_STMODE = re.compile(r"stx?_mode=([A-Z_|0-9]+)")
_STSIZE = re.compile(r"stx?_size=(\d+)")


def _elided(tok: str) -> bool:
    """A string argument strace cut short (``"..."...``, as ``-s 0`` prints every one)."""
    return tok.strip().endswith("...")


def _bytes_arg(tok: str) -> bytes | None:
    s = _str_arg(tok)
    return None if s is None else s.encode("utf-8", "surrogateescape")


def decode_acl_mode(value: bytes) -> tuple[int, bool] | None:
    """``(permission bits, minimal)`` of a ``system.posix_acl_access`` value
    (version 2, then 8-byte entries: tag u16, perm u16, id u32); None if it
    is not one.  The group bits are the mask's when there is a mask, as the
    kernel's ``posix_acl_equiv_mode``/``posix_acl_update_mode`` take them."""
    if len(value) < 4 or (len(value) - 4) % 8 or int.from_bytes(value[:4], "little") != 2:
        return None
    perms = {}
    for i in range(4, len(value), 8):
        tag = int.from_bytes(value[i:i + 2], "little")
        perms.setdefault(tag, int.from_bytes(value[i + 2:i + 4], "little") & 7)
    if 0x01 not in perms or 0x20 not in perms or 0x04 not in perms:
        return None
    group = perms.get(0x10, perms[0x04])
    minimal = set(perms) == {0x01, 0x04, 0x20}
    return (perms[0x01] << 6) | (group << 3) | perms[0x20], minimal


# ------------------------------------------------------------------ state
class _Ofd:
    """An open file description: its path, position and O_APPEND.

    An ``O_TMPFILE`` file is ``anon``: known by its descriptor, not its
    annotation; until it is linked (``pending`` is not None) the operations
    on it wait in ``pending`` as ``(kind, fields)``.
    """

    __slots__ = ("path", "pos", "append", "anon", "pending", "mode")

    def __init__(self, path: str, append: bool):
        self.path = path
        self.pos = 0
        self.append = append
        self.anon = False
        self.pending: list | None = None
        self.mode = 0o600


def _join(base: str, p: str) -> str:
    if p.startswith("/"):
        return p
    if p in ("", "."):
        return base
    if p.startswith("./"):
        p = p[2:]
    return (base.rstrip("/") or "") + "/" + p


class _Reader:
    def __init__(self, skip_prefixes=SKIP_PREFIXES):
        self.skip = tuple(skip_prefixes)
        self.cwd: dict[int, str] = {}
        self.fds: dict[tuple[int, int], _Ofd] = {}
        self.latest: dict[str, _Ofd] = {}
        self.pending: dict[int, str] = {}
        self.created: set[str] = set()
        self.last_stat: dict[int, list] = {}   # pid -> its latest stats, [(path, st_mode)], newest last
        self.trace = Trace()

    # -- helpers -----------------------------------------------------------
    def _skipped(self, path: str | None) -> bool:
        if not path or not path.startswith("/") or path.endswith(" (deleted)"):
            return True
        return any(path == s or path.startswith(s + "/") for s in self.skip)

    def _dir(self, pid: int, tok: str) -> str:
        fd, ann = _fd_arg(tok)
        if fd == -100:
            if ann:
                self.cwd[pid] = ann
            return self.cwd.get(pid, "/")
        return ann or self.cwd.get(pid, "/")

    def _at(self, pid: int, dirtok: str, pathtok: str) -> str | None:
        p = _str_arg(pathtok)
        if p is None:
            return None
        if p.startswith("/"):
            # still learn the cwd from the annotation
            self._dir(pid, dirtok)
            return p
        return _join(self._dir(pid, dirtok), p)

    def _path(self, pid: int, tok: str) -> str | None:
        p = _str_arg(tok)
        if p is None:
            return None
        return _join(self.cwd.get(pid, "/"), p)

    def _ofd(self, pid: int, tok: str) -> _Ofd | None:
        fd, ann = _fd_arg(tok)
        if fd is None:
            return None
        anon = self.fds.get((pid, fd))
        if anon is not None and anon.anon:
            return anon
        if self._skipped(ann):
            return None
        o = self.fds.get((pid, fd))
        if o is None or o.path != ann:
            o = self.latest.get(ann)
            if o is None:
                o = _Ofd(ann, False)
            self.fds[(pid, fd)] = o
        return o

    def _fd_path(self, tok: str) -> str | None:
        _fd, ann = _fd_arg(tok)
        return None if self._skipped(ann) else ann

    def _fd_op(self, pid: int, tok: str, kind: str, lineno: int, **kw) -> None:
        """An operation on a descriptor: held back on an unlinked O_TMPFILE
        file, on the file's own name once it is linked, else on the annotation."""
        fd, _ann = _fd_arg(tok)
        o = self.fds.get((pid, fd)) if fd is not None else None
        if o is not None and o.anon:
            if o.pending is not None:
                o.pending.append((kind, kw))
                if kind == "chmod":
                    o.mode = kw["mode"]
                return
            self._emit(kind, o.path, pid, lineno, **kw)
            return
        self._emit(kind, self._fd_path(tok), pid, lineno, **kw)

    def _emit(self, kind: str, path: str | None, pid: int, lineno: int, **kw) -> None:
        if path is None or self._skipped(path):
            self.trace.nr_skipped += 1
            return
        if kind in ("rename", "link") and self._skipped(kw.get("path2")):
            self.trace.nr_skipped += 1
            return
        self.trace.ops.append(FileOp(kind, path, pid=pid, lineno=lineno, **kw))
        if kind in ("open", "mkdir", "symlink", "mknod"):
            self.created.add(path)
        elif kind in ("rename", "link"):
            self.created.add(kw["path2"])

    def _note_stat(self, path: str | None, rest: str, pid: int = 0) -> None:
        m = _STMODE.search(rest)
        if m is None:
            return
        mode = _mode_arg(m.group(1))
        if path is not None:
            recent = self.last_stat.setdefault(pid, [])
            recent.append((path, mode))
            if len(recent) > 8:
                del recent[0]
        if path is None or self._skipped(path) or path in self.created or path in self.trace.stats:
            return
        s = _STSIZE.search(rest)
        self.trace.stats[path] = (mode, int(s.group(1)) if s else 0)

    # -- one completed syscall -----------------------------------------------
    def syscall(self, pid: int, name: str, argstr: str, ret: str, ret_ann: str | None, lineno: int) -> None:
        t = self.trace
        t.nr_syscalls += 1
        if ret.startswith("-") or ret == "?":
            t.nr_failed += 1
            # still learn the cwd from a failed call's AT_FDCWD annotation
            if "AT_FDCWD<" in argstr:
                self._dir(pid, argstr.split(",", 1)[0])
            return
        a = _split_args(argstr)
        r = int(ret, 0) if ret[:1].isdigit() or ret[:1] == "-" else 0
        h = _HANDLERS.get(name)
        if h is not None:
            h(self, pid, a, r, ret_ann, lineno)

    # -- syscall handlers ------------------------------------------------------
    def _open(self, pid, path, flags, mode, fd, ret_ann, lineno):
        real = ret_ann if ret_ann and ret_ann.startswith("/") else path
        if real is None:
            return
        if not self._skipped(real) and (flags & O_TMPFILE) != O_TMPFILE:
            acc = flags & O_ACCMODE
            if flags & (O_CREAT | O_TRUNC) or acc in (O_WRONLY, O_RDWR):
                self._emit("open", real, pid, lineno, flags=flags, mode=mode)
        o = _Ofd(real, bool(flags & O_APPEND))
        self.fds[(pid, fd)] = o
        if (flags & O_TMPFILE) == O_TMPFILE:
            o.anon, o.pending, o.mode = True, [], mode & 0o7777
            return
        self.latest[real] = o

    def h_open(self, pid, a, r, ann, lineno):
        self._open(pid, self._path(pid, a[0]), _flags_arg(a[1]) if len(a) > 1 else 0,
                   _mode_arg(a[2]) if len(a) > 2 else 0o666, r, ann, lineno)

    def h_openat(self, pid, a, r, ann, lineno):
        self._open(pid, self._at(pid, a[0], a[1]), _flags_arg(a[2]) if len(a) > 2 else 0,
                   _mode_arg(a[3]) if len(a) > 3 else 0o666, r, ann, lineno)

    def h_openat2(self, pid, a, r, ann, lineno):
        # openat2(dirfd, path, {flags=..., mode=..., resolve=...}, size)
        how = a[2] if len(a) > 2 else ""
        fm = re.search(r"flags=([^,}]+)", how)
        mm = re.search(r"mode=([0-7]+)", how)
        self._open(pid, self._at(pid, a[0], a[1]), _flags_arg(fm.group(1)) if fm else 0,
                   int(mm.group(1), 8) if mm else 0o666, r, ann, lineno)

    def h_fallocate(self, pid, a, r, ann, lineno):
        # fallocate(fd, mode, offset, len): only mode 0 (or unshare) can grow the size
        if len(a) < 4 or any(f in a[1] for f in ("KEEP_SIZE", "PUNCH_HOLE", "COLLAPSE_RANGE",
                                                  "INSERT_RANGE", "ZERO_RANGE")):
            return
        self._fd_op(pid, a[0], "fallocate", lineno, size=_int_arg(a[2]) + _int_arg(a[3]))

    def h_creat(self, pid, a, r, ann, lineno):
        self._open(pid, self._path(pid, a[0]), O_CREAT | O_WRONLY | O_TRUNC, _mode_arg(a[1]), r, ann, lineno)

    def _write(self, pid, fdtok, n, offset, lineno):
        o = self._ofd(pid, fdtok)
        if o is None:
            self.trace.nr_skipped += 1
            return
        if offset is None:
            if o.append:
                off = -1
            else:
                off = o.pos
                o.pos += n
        else:
            off = offset
        if n > 0:
            if o.pending is not None:
                o.pending.append(("write", {"offset": off, "size": n}))
            else:
                self._emit("write", o.path, pid, lineno, offset=off, size=n)

    def h_write(self, pid, a, r, ann, lineno):
        self._write(pid, a[0], r, None, lineno)

    def h_pwrite(self, pid, a, r, ann, lineno):
        self._write(pid, a[0], r, _int_arg(a[3]), lineno)

    def h_copy_file_range(self, pid, a, r, ann, lineno):
        i = self._ofd(pid, a[0])
        if i is not None and a[1].strip() == "NULL":
            i.pos += r
        off = None if a[3].strip() == "NULL" else _int_arg(a[3])
        self._write(pid, a[2], r, off, lineno)

    def h_sendfile(self, pid, a, r, ann, lineno):
        self._write(pid, a[0], r, None, lineno)

    def h_read(self, pid, a, r, ann, lineno):
        o = self._ofd(pid, a[0])
        if o is not None:
            o.pos += r

    def h_lseek(self, pid, a, r, ann, lineno):
        o = self._ofd(pid, a[0])
        if o is not None:
            o.pos = r

    def h_close(self, pid, a, r, ann, lineno):
        fd, _ = _fd_arg(a[0])
        self.fds.pop((pid, fd), None)

    def _dup(self, pid, a, newfd):
        fd, ann = _fd_arg(a[0])
        o = self.fds.get((pid, fd))
        if o is None and ann and ann.startswith("/"):
            o = self.latest.get(ann)
        if o is not None:
            self.fds[(pid, newfd)] = o

    def h_dup(self, pid, a, r, ann, lineno):
        self._dup(pid, a, r)

    def h_fcntl(self, pid, a, r, ann, lineno):
        if len(a) > 1 and a[1].strip().startswith("F_DUPFD"):
            self._dup(pid, a, r)

    def h_rename(self, pid, a, r, ann, lineno):
        self._emit("rename", self._path(pid, a[0]), pid, lineno, path2=self._path(pid, a[1]))

    def h_renameat(self, pid, a, r, ann, lineno):
        flags = a[4].strip() if len(a) > 4 else ""
        if "RENAME_EXCHANGE" in flags:
            self._emit("exchange", self._at(pid, a[0], a[1]), pid, lineno, path2=self._at(pid, a[2], a[3]))
            return
        self._emit("rename", self._at(pid, a[0], a[1]), pid, lineno, path2=self._at(pid, a[2], a[3]))

    def h_unlink(self, pid, a, r, ann, lineno):
        self._emit("unlink", self._path(pid, a[0]), pid, lineno)

    def h_unlinkat(self, pid, a, r, ann, lineno):
        kind = "rmdir" if len(a) > 2 and "AT_REMOVEDIR" in a[2] else "unlink"
        self._emit(kind, self._at(pid, a[0], a[1]), pid, lineno)

    def h_rmdir(self, pid, a, r, ann, lineno):
        self._emit("rmdir", self._path(pid, a[0]), pid, lineno)

    def h_mkdir(self, pid, a, r, ann, lineno):
        self._emit("mkdir", self._path(pid, a[0]), pid, lineno, mode=_mode_arg(a[1]) if len(a) > 1 else 0o777)

    def h_mkdirat(self, pid, a, r, ann, lineno):
        self._emit("mkdir", self._at(pid, a[0], a[1]), pid, lineno, mode=_mode_arg(a[2]) if len(a) > 2 else 0o777)

    def h_mknod(self, pid, a, r, ann, lineno):
        self._emit("mknod", self._path(pid, a[0]), pid, lineno, mode=_mode_arg(a[1]),
                   size=_dev_arg(a[2]) if len(a) > 2 else 0)

    def h_mknodat(self, pid, a, r, ann, lineno):
        self._emit("mknod", self._at(pid, a[0], a[1]), pid, lineno, mode=_mode_arg(a[2]),
                   size=_dev_arg(a[3]) if len(a) > 3 else 0)

    def h_chmod(self, pid, a, r, ann, lineno):
        self._emit("chmod", self._path(pid, a[0]), pid, lineno, mode=_mode_arg(a[1]))

    def h_fchmod(self, pid, a, r, ann, lineno):
        self._fd_op(pid, a[0], "chmod", lineno, mode=_mode_arg(a[1]))

    def h_fchmodat(self, pid, a, r, ann, lineno):
        # fchmodat2 adds flags: AT_EMPTY_PATH with "" names the descriptor itself
        if _str_arg(a[1]) == "" and len(a) > 3 and "AT_EMPTY_PATH" in a[3]:
            self._fd_op(pid, a[0], "chmod", lineno, mode=_mode_arg(a[2]))
            return
        self._emit("chmod", self._at(pid, a[0], a[1]), pid, lineno, mode=_mode_arg(a[2]))

    def _xattr(self, pid, path_fn, a, lineno, target):
        """setxattr/lsetxattr/fsetxattr(target, name, value, size, flags)."""
        if len(a) < 4:
            return
        size = _int_arg(a[3])
        name = None if _elided(a[1]) else _str_arg(a[1])
        value = None if _elided(a[2]) else _bytes_arg(a[2])
        if name is not None and name != _ACL_ACCESS:
            path_fn("setxattr", path2=name, size=size, data=value if value is not None else bytes(size))
            return
        if value is not None and (name == _ACL_ACCESS or len(value) == _MINIMAL_ACL_BYTES):
            acl = decode_acl_mode(value)
            if acl is None:
                self.trace.nr_skipped += 1
                return
            bits, minimal = acl
            path_fn("chmod", mode=bits, flags=CHMOD_ACL)
            if not minimal:   # the kernel keeps an ACL that the mode cannot say
                path_fn("setxattr", path2=_ACL_ACCESS, size=len(value), data=value)
            return
        if size != _MINIMAL_ACL_BYTES:
            self.trace.nr_skipped += 1   # an elided ACL with named entries: its bits are unknown
            return
        # the source: the newest file this process stat'ed that is not the target
        src = next((m for p, m in reversed(self.last_stat.get(pid, ())) if p != target), None)
        if src is None:
            self.trace.nr_skipped += 1
            return
        self.trace.nr_modes_inferred += 1
        path_fn("chmod", mode=_stat.S_IMODE(src) & 0o777, flags=CHMOD_ACL | MODE_INFERRED)

    def h_setxattr(self, pid, a, r, ann, lineno):
        path = self._path(pid, a[0])
        self._xattr(pid, lambda kind, **kw: self._emit(kind, path, pid, lineno, **kw), a, lineno, path)

    def h_fsetxattr(self, pid, a, r, ann, lineno):
        fd, fd_ann = _fd_arg(a[0])
        o = self.fds.get((pid, fd)) if fd is not None else None
        target = o.path if o is not None and o.anon else fd_ann
        self._xattr(pid, lambda kind, **kw: self._fd_op(pid, a[0], kind, lineno, **kw), a, lineno, target)

    def h_ioctl(self, pid, a, r, ann, lineno):
        if len(a) < 3 or "FICLONE" not in a[1] or "FICLONERANGE" in a[1]:
            return
        dst = self._ofd(pid, a[0])
        src_fd, src_ann = _fd_arg(a[2])
        src = self.fds.get((pid, src_fd)) if src_fd is not None else None
        src_path = src.path if src is not None else src_ann
        if dst is None or src_path is None or self._skipped(src_path):
            self.trace.nr_skipped += 1
            return
        if dst.pending is not None:
            dst.pending.append(("clone", {"path2": src_path}))
        else:
            self._emit("clone", dst.path, pid, lineno, path2=src_path)

    def h_chown(self, pid, a, r, ann, lineno, nofollow=False):
        self._emit("chown", self._path(pid, a[0]), pid, lineno, uid=_int_arg(a[1], -1),
                   gid=_int_arg(a[2], -1), flags=int(nofollow))

    def h_lchown(self, pid, a, r, ann, lineno):
        self.h_chown(pid, a, r, ann, lineno, nofollow=True)

    def h_fchown(self, pid, a, r, ann, lineno):
        self._fd_op(pid, a[0], "chown", lineno, uid=_int_arg(a[1], -1), gid=_int_arg(a[2], -1))

    def h_fchownat(self, pid, a, r, ann, lineno):
        flags = a[4] if len(a) > 4 else ""
        p = _str_arg(a[1])
        path = self._fd_path(a[0]) if p == "" and "AT_EMPTY_PATH" in flags else self._at(pid, a[0], a[1])
        self._emit("chown", path, pid, lineno, uid=_int_arg(a[2], -1), gid=_int_arg(a[3], -1),
                   flags=int("AT_SYMLINK_NOFOLLOW" in flags))

    def h_symlink(self, pid, a, r, ann, lineno):
        self._emit("symlink", self._path(pid, a[1]), pid, lineno, path2=_str_arg(a[0]) or "")

    def h_symlinkat(self, pid, a, r, ann, lineno):
        self._emit("symlink", self._at(pid, a[1], a[2]), pid, lineno, path2=_str_arg(a[0]) or "")

    def h_link(self, pid, a, r, ann, lineno):
        self._emit("link", self._path(pid, a[0]), pid, lineno, path2=self._path(pid, a[1]))

    def h_linkat(self, pid, a, r, ann, lineno):
        flags = a[4] if len(a) > 4 else ""
        dst = self._at(pid, a[2], a[3])
        src_name = _str_arg(a[1])
        o = None
        if src_name == "" and "AT_EMPTY_PATH" in flags:
            fd, _ = _fd_arg(a[0])
            o = self.fds.get((pid, fd))
            if o is None:
                self._emit("link", self._fd_path(a[0]), pid, lineno, path2=dst)
                return
        else:
            m = re.fullmatch(r"/proc/(?:self|\d+)/fd/(\d+)", src_name or "")
            if m and "AT_SYMLINK_FOLLOW" in flags:
                o = self.fds.get((pid, int(m.group(1))))
        if o is not None and o.anon and o.pending is not None:
            # O_TMPFILE named at last: an exclusive create, then what it held back
            if dst is None or self._skipped(dst):
                self.trace.nr_skipped += 1
                return
            pending, o.pending = o.pending, None
            o.path = dst
            self._emit("open", dst, pid, lineno, flags=O_CREAT | O_EXCL | O_WRONLY, mode=o.mode)
            for kind, kw in pending:
                self._emit(kind, dst, pid, lineno, **kw)
            return
        if o is not None:
            self._emit("link", o.path, pid, lineno, path2=dst)
            return
        self._emit("link", self._at(pid, a[0], a[1]), pid, lineno, path2=dst)

    def h_truncate(self, pid, a, r, ann, lineno):
        self._emit("truncate", self._path(pid, a[0]), pid, lineno, size=_int_arg(a[1]))

    def h_ftruncate(self, pid, a, r, ann, lineno):
        self._fd_op(pid, a[0], "truncate", lineno, size=_int_arg(a[1]))

    def h_fsync(self, pid, a, r, ann, lineno):
        fd, _ = _fd_arg(a[0])
        o = self.fds.get((pid, fd))
        if o is not None and o.anon and o.pending is not None:
            return   # nothing named yet
        self._fd_op(pid, a[0], "fsync", lineno)

    def h_utimensat(self, pid, a, r, ann, lineno):
        p = _str_arg(a[1])
        nofollow = int(len(a) > 3 and "AT_SYMLINK_NOFOLLOW" in a[3])
        if p is None or (p == "" and len(a) > 3 and "AT_EMPTY_PATH" in a[3]):
            self._fd_op(pid, a[0], "utime", lineno, flags=nofollow)   # futimens: on the descriptor
            return
        self._emit("utime", self._at(pid, a[0], a[1]), pid, lineno, flags=nofollow)

    def h_utimes(self, pid, a, r, ann, lineno):
        self._emit("utime", self._path(pid, a[0]), pid, lineno)

    def h_chdir(self, pid, a, r, ann, lineno):
        p = self._path(pid, a[0])
        if p:
            self.cwd[pid] = p

    def h_fchdir(self, pid, a, r, ann, lineno):
        _fd, p = _fd_arg(a[0])
        if p:
            self.cwd[pid] = p

    def h_stat(self, pid, a, r, ann, lineno):
        self._note_stat(self._path(pid, a[0]), a[1] if len(a) > 1 else "", pid)

    def h_fstatat(self, pid, a, r, ann, lineno):
        p = _str_arg(a[1])
        path = self._fd_path(a[0]) if p == "" else self._at(pid, a[0], a[1])
        self._note_stat(path, a[2] if len(a) > 2 else "", pid)

    def h_statx(self, pid, a, r, ann, lineno):
        p = _str_arg(a[1])
        path = self._fd_path(a[0]) if p == "" else self._at(pid, a[0], a[1])
        self._note_stat(path, a[4] if len(a) > 4 else "", pid)

    def h_fstat(self, pid, a, r, ann, lineno):
        self._note_stat(self._fd_path(a[0]), a[1] if len(a) > 1 else "", pid)


def _dev_arg(tok: str) -> int:
    m = re.search(r"makedev\((0x[0-9a-f]+|\d+),\s*(0x[0-9a-f]+|\d+)\)", tok)
    return os.makedev(int(m.group(1), 0), int(m.group(2), 0)) if m else 0


_R = _Reader
_HANDLERS = {
    "open": _R.h_open, "openat": _R.h_openat, "openat2": _R.h_openat2, "creat": _R.h_creat,
    "fallocate": _R.h_fallocate,
    "write": _R.h_write, "writev": _R.h_write, "pwrite64": _R.h_pwrite, "pwritev": _R.h_pwrite,
    "pwritev2": _R.h_pwrite, "copy_file_range": _R.h_copy_file_range, "sendfile": _R.h_sendfile,
    "sendfile64": _R.h_sendfile, "read": _R.h_read, "readv": _R.h_read, "lseek": _R.h_lseek,
    "close": _R.h_close, "dup": _R.h_dup, "dup2": _R.h_dup, "dup3": _R.h_dup, "fcntl": _R.h_fcntl,
    "rename": _R.h_rename, "renameat": _R.h_renameat, "renameat2": _R.h_renameat,
    "unlink": _R.h_unlink, "unlinkat": _R.h_unlinkat, "rmdir": _R.h_rmdir,
    "mkdir": _R.h_mkdir, "mkdirat": _R.h_mkdirat, "mknod": _R.h_mknod, "mknodat": _R.h_mknodat,
    "chmod": _R.h_chmod, "fchmod": _R.h_fchmod, "fchmodat": _R.h_fchmodat, "fchmodat2": _R.h_fchmodat,
    "chown": _R.h_chown, "lchown": _R.h_lchown, "fchown": _R.h_fchown, "fchownat": _R.h_fchownat,
    "symlink": _R.h_symlink, "symlinkat": _R.h_symlinkat, "link": _R.h_link, "linkat": _R.h_linkat,
    "truncate": _R.h_truncate, "ftruncate": _R.h_ftruncate, "fsync": _R.h_fsync, "fdatasync": _R.h_fsync,
    "utimensat": _R.h_utimensat, "utimes": _R.h_utimes, "futimesat": _R.h_utimensat,
    "chdir": _R.h_chdir, "fchdir": _R.h_fchdir,
    "stat": _R.h_stat, "lstat": _R.h_stat, "newfstatat": _R.h_fstatat, "fstatat64": _R.h_fstatat,
    "statx": _R.h_statx, "fstat": _R.h_fstat,
    "setxattr": _R.h_setxattr, "lsetxattr": _R.h_setxattr, "fsetxattr": _R.h_fsetxattr,
    "ioctl": _R.h_ioctl,
}
_HANDLERS = {k: v for k, v in _HANDLERS.items() if v is not None}


# ------------------------------------------------------------------ entry points
def parse(lines: Iterable[str], *, skip_prefixes=SKIP_PREFIXES) -> Trace:
    """Parse strace output lines (see the module docstring) into a :class:`Trace`."""
    rd = _Reader(skip_prefixes)
    t = rd.trace
    for lineno, line in enumerate(lines, 1):
        t.nr_lines += 1
        line = line.rstrip("\n")
        m = _HEAD.match(line)
        if m and m.group(3) is not None and (m.group(2) or not line[:1].isalpha()):
            pid, body = int(m.group(1)), m.group(3)
        else:
            m2 = _HEAD_NOPID.match(line)
            pid, body = 0, m2.group(2)
        if not body or body.startswith(("+++", "---")):
            continue
        r = _RESUMED.match(body)
        if r:
            head = rd.pending.pop(pid, None)
            if head is None:
                continue
            body = head + r.group(2)
        elif body.endswith("<unfinished ...>"):
            rd.pending[pid] = body[: -len("<unfinished ...>")].rstrip()
            continue
        p = body.find("(")
        if p <= 0:
            continue
        name = body[:p]
        if not name.replace("_", "").isalnum():
            continue
        rm = _RET.search(body)
        if not rm:
            continue
        argstr = body[p + 1:rm.start()]
        ann = rm.group(2)
        if ann is not None:
            ann = _unescape(ann) + (" (deleted)" if rm.group(3) else "")
        rd.syscall(pid, name, argstr, rm.group(1), ann, lineno)
    return t


def read(path, **kw) -> Trace:
    """:func:`parse` a trace file (``.gz`` read transparently)."""
    p = os.fspath(path)
    opener = gzip.open if p.endswith(".gz") else open
    with opener(p, "rt", encoding="utf-8", errors="surrogateescape") as f:
        return parse(f, **kw)


# ------------------------------------------------------------------ replay
def replay(ops: Iterable[FileOp], view, *, umask: int = 0o022, strict: bool = False) -> dict:
    """Apply ``ops`` to a mounted view (anything with the
    :class:`thinp.drivers.MountedView` operations).

    File content is opaque: writes pass an ``int`` length on an accounting
    view and deterministic bytes on a payload view.  An op the view refuses
    (the trace saw it succeed, but the replayed tree differs) is counted in
    ``errors`` (by errno name), or raised with ``strict``.  Returns counts:
    ``applied``, ``errors``, ``bytes_written``, and ``modes_inferred`` (the
    ACL modes taken from a source's ``stat``, see the module docstring).
    """
    applied, written, errors, inferred = 0, 0, {}, 0
    payload = bool(getattr(view, "payload", False))
    for op in ops:
        try:
            _apply(view, op, umask, payload)
            applied += 1
            if op.kind == "write":
                written += op.size
            elif op.kind == "chmod" and op.flags & MODE_INFERRED:
                inferred += 1
        except OSError as e:
            if strict:
                raise
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
    return {"applied": applied, "errors": errors, "bytes_written": written, "modes_inferred": inferred}


def _nofollow(fn, *args):
    """Call a view method with ``follow_symlinks=False`` where it takes one (the
    union views do); otherwise follow, as the base interface does."""
    import inspect

    if "follow_symlinks" in inspect.signature(fn).parameters:
        return fn(*args, follow_symlinks=False)
    return fn(*args)


def _data(n: int, op: FileOp, payload: bool):
    if not payload:
        return n
    seed = (op.lineno * 2654435761) & 0xFFFFFFFF
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _apply(view, op: FileOp, umask: int, payload: bool) -> None:
    k = op.kind
    if k == "write":
        off = op.offset
        if off < 0:   # O_APPEND: at the end of the file as the view has it now
            try:
                st = view.stat(op.path)
            except OSError:
                st = None
            off = st.st_size if st is not None else 0
        try:
            view.write(op.path, off, _data(op.size, op, payload))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise   # EINVAL: a device or fifo, where nothing lands in the tree
    elif k == "open":
        acc = op.flags & O_ACCMODE
        view.open(op.path, write=acc in (O_WRONLY, O_RDWR) or bool(op.flags & O_TRUNC),
                  create=bool(op.flags & O_CREAT), truncate=bool(op.flags & O_TRUNC),
                  exclusive=bool(op.flags & O_EXCL), mode=(op.mode if op.mode >= 0 else 0o666) & ~umask)
    elif k == "truncate":
        view.truncate(op.path, op.size)
    elif k == "fallocate":
        if op.size > view.stat(op.path).st_size:
            view.truncate(op.path, op.size)
    elif k == "rename":
        view.rename(op.path, op.path2)
    elif k == "exchange":
        # three renames through a name of its own, where the view has no exchange
        tmp = op.path + ".thinp-exchange"
        view.rename(op.path, tmp)
        view.rename(op.path2, op.path)
        view.rename(tmp, op.path2)
    elif k == "unlink":
        view.unlink(op.path)
    elif k == "rmdir":
        view.rmdir(op.path)
    elif k == "mkdir":
        view.mkdir(op.path, (op.mode if op.mode >= 0 else 0o777) & ~umask & 0o7777)
    elif k == "mknod":
        mode = op.mode if op.mode >= 0 else _stat.S_IFREG | 0o644
        view.mknod(op.path, _stat.S_IFMT(mode) | (_stat.S_IMODE(mode) & ~umask), op.size)
    elif k == "chmod":
        mode = op.mode
        if op.flags & CHMOD_ACL:   # an ACL sets the permission bits only
            mode = (_stat.S_IMODE(view.stat(op.path).st_mode) & 0o7000) | (mode & 0o777)
        view.chmod(op.path, mode)
    elif k == "setxattr":
        view.setxattr(op.path, op.path2, op.data if len(op.data) == op.size else bytes(op.size))
    elif k == "clone":
        size = view.stat(op.path2).st_size
        view.truncate(op.path, 0)
        if size:
            view.write(op.path, 0, _data(size, op, payload))
    elif k == "chown":
        if op.flags & 1:
            _nofollow(view.chown, op.path, op.uid, op.gid)
        else:
            view.chown(op.path, op.uid, op.gid)
    elif k == "symlink":
        view.symlink(op.path2, op.path)
    elif k == "link":
        view.link(op.path, op.path2)
    elif k == "utime":
        if op.flags & 1:
            _nofollow(view.utime, op.path)
        else:
            view.utime(op.path)
    elif k == "fsync":
        view.fsync(op.path)
    else:  # pragma: no cover - parse never makes other kinds
        raise ValueError(f"unknown op kind {k!r}")
