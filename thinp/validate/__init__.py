"""Side-by-side comparisons of the models with the real kernel and tools.

* :mod:`thinp.validate.fs` -- real mkfs.ext4/mkfs.xfs and the kernel on loop
  devices beside the filesystem models (``thinp validate fs``);
* :mod:`thinp.validate.union` -- kernel overlayfs beside the union drivers
  (``thinp validate union``);
* :mod:`thinp.validate.block` -- real btrfs and zfs-fuse beside the block
  drivers (``thinp validate block``).

Each one skips, saying why, where the machine refuses to mount.
"""
