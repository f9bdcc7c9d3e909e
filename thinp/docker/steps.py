"""``--thinp-steps`` files: what ran in a container, as a JSON list of view
operations (``[["write", "/f", 0, 4096], ["unlink", "/etc/group"]]``), for
``thinp docker run`` and ``RUN --thinp-steps=FILE`` where a command cannot be
executed for real."""
from __future__ import annotations

import json

__all__ = ["STEP_OPS", "load_steps"]

#: the view operations a ``--thinp-steps`` file may name
STEP_OPS = ("create", "write", "truncate", "unlink", "mkdir", "rmdir", "rename", "link", "symlink", "mknod",
            "chmod", "chown", "utime", "setxattr", "fsync")


def load_steps(path: str) -> list[tuple]:
    """A ``--thinp-steps`` file: a JSON list of ``[operation, *args]`` (``STEP_OPS``)."""
    try:
        with open(path) as f:
            steps = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(steps, list) or not all(isinstance(s, list) and s and isinstance(s[0], str) for s in steps):
        raise ValueError(f"{path}: want a JSON list of [operation, arguments...] lists")
    for i, s in enumerate(steps):
        if s[0] not in STEP_OPS:
            raise ValueError(f"{path}: step {i + 1}: unknown operation {s[0]!r} (known: {', '.join(STEP_OPS)})")
    return [tuple(s) for s in steps]
