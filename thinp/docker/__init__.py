"""Docker's image commands over a persistent engine root.

* :mod:`.daemon` -- :class:`Daemon`: an :class:`~thinp.Engine` whose state
  survives between commands in a root directory, as dockerd's
  ``/var/lib/docker``; one method per ``docker`` verb.
* :mod:`.output` -- what the docker CLI prints for each verb (tables, sizes,
  "2 minutes ago").
* :mod:`.registry` -- a client of the OCI distribution API over HTTP
  (pull, push, catalog), and ``oci:DIR`` layouts as a registry.
* :mod:`.dockerfile` / :mod:`.build` -- a Dockerfile parser and the classic
  builder (one layer per filesystem-changing instruction, its cache);
* :mod:`.steps` -- ``--thinp-steps`` files (what ran, where it cannot run here).

``thinp docker`` (:mod:`thinp.cli.docker`) is the command line over these.
"""
from __future__ import annotations

__all__ = ["Daemon"]


def __getattr__(name):
    if name == "Daemon":
        from .daemon import Daemon

        return Daemon
    raise AttributeError(name)
