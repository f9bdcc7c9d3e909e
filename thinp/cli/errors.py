"""Which exceptions are the user's mistakes, and their one line."""
from __future__ import annotations


def report(e: BaseException) -> str | None:
    """The one line for a user's mistake, or None for a bug (let it raise).

    ``thinp.errors`` exceptions, ``ValueError`` and ``OSError`` are user
    mistakes or the machine's refusals; an ``OSError`` is prefixed with the
    path it names when its message lacks it."""
    from ..errors import ThinpError

    if not isinstance(e, (ThinpError, ValueError, OSError)):
        return None
    msg = str(e) or e.__class__.__name__
    if isinstance(e, OSError) and not isinstance(e, ThinpError):
        if e.strerror and e.filename:
            msg = f"{e.filename}: {e.strerror}"
        elif e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
    return " ".join(msg.split("\n")[0].split()) if "\n" in msg else msg
