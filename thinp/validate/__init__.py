"""Side-by-side comparisons of the models with the real kernel and tools.

Every harness runs its workload through the one :class:`~.target.Target`
protocol (a real directory on a real mount, or thinp's simulated filesystem
or driver view) and asks :func:`~.target.can_mount` whether this machine can
make the real side, skipping with that reason where it cannot:

* :mod:`thinp.validate.fs` -- real mkfs.ext4/mkfs.xfs and the kernel on loop
  devices beside the filesystem models (``thinp validate fs``);
* :mod:`thinp.validate.union` -- kernel overlayfs beside the union drivers
  (``thinp validate drivers``);
* :mod:`thinp.validate.block` -- real btrfs and zfs-fuse beside the block
  drivers;
* :mod:`thinp.validate.capture` -- recording a reference trace on a real
  overlay mount (``thinp capture``);
* :mod:`thinp.validate.timing` and :mod:`thinp.validate.calibrate` -- real
  timings beside the timing model (``thinp validate timing``, ``thinp calibrate``).
"""
