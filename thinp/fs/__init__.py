"""The file layer: ext4- and xfs-like filesystems on any block device.

``mkfs(device, "ext4" | "xfs", **options)`` formats ``device`` (anything with
the :class:`~thinp.blockdev.BlockDevice` protocol) the way mke2fs 1.47 /
mkfs.xfs 6.1 do, and returns the mounted :class:`Filesystem`.

Options are mkfs's own:

* ext4: ``lazy_itable_init`` (default True), ``lazy_journal_init`` (False),
  ``nodiscard`` (False), ``inode_ratio`` (16384), ``journal_size`` (bytes or
  a size string; default by fs size);
* xfs: ``agcount`` (default 4), ``nodiscard``.

and the mount's: ``discard`` (pass frees down as they commit), ``journal``
(ext4 only; False is a journal-less ext4), ``seed`` (the Orlov spreader's
random start, fixed so runs repeat).

Calibration: ``python -m thinp.validate.fs`` runs the real mkfs and kernel
on loop devices beside the model (:mod:`thinp.validate.fs`).

Not modelled, knowingly:

* block sizes other than 4 KiB (below 512 MiB mke2fs picks 1 KiB blocks; the
  model keeps 4 KiB with that type's inode ratio and journal size);
* ext4 bigalloc, inline_data, meta_bg, the background ext4lazyinit thread;
  htree directories are sized, not hashed;
* xfs free-space btree splits, speculative EOF preallocation, sparse inode
  chunks, and searching both sides of the goal (data goes first-fit forward
  from the inode);
* the kernel finishes ``-o discard`` discards asynchronously, up to a commit
  interval after the unlink; the model issues them at the next commit;
* a write through a dangling symlink fails with EEXIST instead of creating
  the target; EXDEV has no cause inside one filesystem.
"""
from __future__ import annotations

from .core import Filesystem, StatResult
from .ext4 import Ext4, Ext4Geometry
from .xfs import Xfs

__all__ = ["mkfs", "copy_file", "copy_tree", "Filesystem", "Ext4", "Xfs", "Ext4Geometry", "StatResult", "FS_TYPES"]

FS_TYPES = {"ext4": Ext4, "xfs": Xfs}


def mkfs(device, fstype: str = "ext4", **options) -> Filesystem:
    """Format ``device`` with ``fstype`` and return it mounted."""
    try:
        cls = FS_TYPES[fstype]
    except KeyError:
        raise ValueError(f"fstype {fstype!r} is not one of {sorted(FS_TYPES)}") from None
    import inspect

    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "device"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"{fstype} mkfs does not take option(s) {bad}; it takes {sorted(allowed)}")
    return cls(device, **options)


def copy_file(src: Filesystem, src_path: str, dst: Filesystem, dst_path: str, *, metadata: bool = True) -> None:
    """Copy a regular file's content (and, with ``metadata``, mode, owner,
    times and xattrs) from one filesystem to another, as ``cp -a`` would.

    Both must be payload filesystems (bytes are copied) or both accounting
    (version stamps are copied, so ``content()`` compares equal).  Zero
    blocks become holes, as ``cp --sparse=always`` leaves them.
    """
    import stat as _stat

    if src.payload != dst.payload:
        raise ValueError("copy_file: one filesystem stores payload and the other does not")
    st = src.stat(src_path)
    if not _stat.S_ISREG(st.st_mode):
        raise ValueError(f"copy_file: {src_path!r} is not a regular file")
    if src.payload:
        data = src.read(src_path)
        if dst.exists(dst_path):
            dst.truncate(dst_path, 0)
        else:
            dst.create(dst_path)
        blk = 4096
        for off in range(0, len(data), blk):
            piece = data[off:off + blk]
            if piece.count(0) != len(piece):
                dst.write(dst_path, off, piece)
        dst.truncate(dst_path, len(data))
    else:
        dst.write_stamps(dst_path, src.read(src_path), st.st_size)
    if metadata:
        dst.chmod(dst_path, _stat.S_IMODE(st.st_mode))
        dst.chown(dst_path, st.st_uid, st.st_gid)
        for name in src.listxattr(src_path):
            dst.setxattr(dst_path, name, src.getxattr(src_path, name))
        dst.utime(dst_path, (st.st_atime, st.st_mtime))


def copy_tree(src: Filesystem, src_path: str, dst: Filesystem, dst_path: str) -> int:
    """``cp -a src_path dst_path`` between (or within) filesystems: directories,
    files, symlinks, device nodes and fifos, with modes, owners, times and
    xattrs; hard links inside the tree stay hard links.  ``dst_path`` must not
    exist.  Returns the number of entries made.
    """
    import stat as _stat

    top = src.lstat(src_path)
    if not _stat.S_ISDIR(top.st_mode):
        raise ValueError(f"copy_tree: {src_path!r} is not a directory")
    src_base = "/" + "/".join(p for p in src_path.split("/") if p)
    dst_base = "/" + "/".join(p for p in dst_path.split("/") if p)
    seen: dict[int, str] = {}
    made = 0
    dirs_meta = []
    for dpath, dirnames, filenames in src.walk(src_path):
        rel = dpath[len(src_base):] if src_base != "/" else dpath
        tdir = (dst_base.rstrip("/") + rel) if rel not in ("", "/") else dst_base
        st = src.lstat(dpath)
        dst.mkdir(tdir, _stat.S_IMODE(st.st_mode))
        made += 1
        dirs_meta.append((dpath, tdir, st))
        for name in filenames:
            s_p, d_p = f"{dpath.rstrip('/')}/{name}", f"{tdir.rstrip('/')}/{name}"
            fst = src.lstat(s_p)
            made += 1
            if fst.st_nlink > 1 and fst.st_ino in seen:
                dst.link(seen[fst.st_ino], d_p)
                continue
            mode = fst.st_mode
            if _stat.S_ISREG(mode):
                copy_file(src, s_p, dst, d_p)
            elif _stat.S_ISLNK(mode):
                dst.symlink(src.readlink(s_p), d_p)
                dst.chown(d_p, fst.st_uid, fst.st_gid, follow_symlinks=False)
            else:
                dst.mknod(d_p, mode, fst.st_rdev)
                dst.chown(d_p, fst.st_uid, fst.st_gid)
            for xname in src.listxattr(s_p, follow_symlinks=False):
                dst.setxattr(d_p, xname, src.getxattr(s_p, xname, follow_symlinks=False), follow_symlinks=False)
            if fst.st_nlink > 1:
                seen[fst.st_ino] = d_p
    for dpath, tdir, st in reversed(dirs_meta):   # children first, so times stick
        dst.chown(tdir, st.st_uid, st.st_gid)
        for xname in src.listxattr(dpath):
            dst.setxattr(tdir, xname, src.getxattr(dpath, xname))
        dst.utime(tdir, (st.st_atime, st.st_mtime))
    return made
