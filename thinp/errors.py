"""Exceptions raised by thinp.

Every error a user can cause is one of these classes (or a ``ValueError`` for a
bad argument).  Classes that model a kernel error also carry its errno, so code
written against real devices (``except OSError as e: e.errno == ENOSPC``) works
unchanged against thinp.
"""
from __future__ import annotations

import errno as _errno

__all__ = [
    "ThinpError",
    "NoSpaceError",
    "DeviceExistsError",
    "DeviceNotFoundError",
    "PoolBusyError",
    "MetadataCorruptError",
    "ReadOnlyPoolError",
    "PoolFailedError",
    "OutOfMetadataSpaceError",
    "MessageRefusedError",
    "NotSupportedError",
    "ImageFormatError",
    "TooManyLayersError",
    "TransactionIdMismatchError",
    "ImageConflictError",
    "ImageNotFoundError",
]


class ThinpError(Exception):
    """Base class of every thinp error."""


class _ErrnoError(ThinpError, OSError):
    """A thinp error that is also an ``OSError`` with a fixed errno."""

    errno_value = _errno.EIO

    def __init__(self, message: str):
        OSError.__init__(self, self.errno_value, message)
        self.message = message

    def __str__(self) -> str:  # OSError's default prefixes "[Errno N]"
        return self.message


class NoSpaceError(_ErrnoError):
    """The pool (or filesystem) has no free data block: ENOSPC."""

    errno_value = _errno.ENOSPC


class DeviceExistsError(_ErrnoError):
    """A thin id is already in use: EEXIST."""

    errno_value = _errno.EEXIST


class DeviceNotFoundError(_ErrnoError):
    """No thin device with that id: ENODEV."""

    errno_value = _errno.ENODEV


class PoolBusyError(_ErrnoError):
    """Another process holds the pool open read-write: EBUSY."""

    errno_value = _errno.EBUSY


class MetadataCorruptError(_ErrnoError):
    """Metadata failed a checksum, magic, version or bounds check: EUCLEAN."""

    errno_value = _errno.EUCLEAN


class ReadOnlyPoolError(_ErrnoError):
    """The pool is in read-only (or fail) mode: EROFS."""

    errno_value = _errno.EROFS


class OutOfMetadataSpaceError(ReadOnlyPoolError):
    """Requests with a block that needed a new mapping while the pool is out
    of metadata space (dm-thin's PM_OUT_OF_METADATA_SPACE, reported as
    ``ro``) failed with EIO, as dm errors those blocks' bios; their other
    blocks ran.  ``failed`` holds their request indices; ``result`` (set by
    ``replay``) what the whole run did (``nr_eio`` the failed blocks)."""

    errno_value = _errno.EIO

    def __init__(self, message: str, failed=()):
        super().__init__(message)
        self.failed = failed
        self.result = None


class NotSupportedError(_ErrnoError):
    """The operation or driver is not supported: EOPNOTSUPP."""

    errno_value = _errno.EOPNOTSUPP


class MessageRefusedError(ReadOnlyPoolError, NotSupportedError):
    """A pool message (create_thin, create_snap, delete, set_transaction_id,
    reserve/release_metadata_snap) refused because the pool is out of
    metadata space, read-only or failed: dm-thin's ``pool_message`` returns
    EOPNOTSUPP in every mode from PM_OUT_OF_METADATA_SPACE on."""

    errno_value = _errno.EOPNOTSUPP


class PoolFailedError(_ErrnoError):
    """The pool is in fail mode: every I/O errors, as dm-thin's fail mode: EIO."""

    errno_value = _errno.EIO


class TransactionIdMismatchError(ThinpError, ValueError):
    """``set_transaction_id old new`` named the wrong current id."""


class ImageFormatError(ThinpError, ValueError):
    """An image, layer tar or manifest is malformed or hostile."""


class TooManyLayersError(ThinpError):
    """A layer chain is deeper than the driver allows (overlay2: 128)."""


class ImageConflictError(ThinpError):
    """``rmi`` refused: a container uses the image, it has children, or it is
    tagged in several repositories (Docker's 409 conflict); ``force`` overrides."""


class RealRunError(ThinpError):
    """A run on the real kernel (``thinp validate``, ``thinp calibrate``)
    failed: a tool exited non-zero, or did not answer within its time
    limit (zfs-fuse has been seen to lose one of 16 concurrent ``zfs
    clone`` calls)."""


class ImageNotFoundError(ThinpError, KeyError):
    """No image with that ID or reference ("No such image")."""

    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0]) if self.args else ""
