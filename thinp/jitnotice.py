"""Say so when numba compiles: "compiling kernels (first run only)".

The kernels are compiled on their first call and cached beside the sources
(``config.njit``'s ``cache=True``), so a fresh install spends its first
minute compiling and every later process loads the cache in milliseconds.
:func:`announce_compiles` listens to numba's ``numba:compile`` event, which
fires only on a cache miss, and reports on stderr: one line when the first
compile starts, a running count on a terminal, and the total at the end.
Nothing is printed when everything came from the cache.  numba is imported
only once a command imports a kernel module.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager


class _Listener:
    def __init__(self, stream):
        self.stream = stream
        self.depth = 0
        self.done = 0
        self.t0 = None
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.pid = os.getpid()
        self.started = 0.0
        self.compiling_s = 0.0      # time inside top-level compiles (not the work between them)

    def _in_worker(self) -> bool:
        """A forked worker process (compare's or sweep's) says it once for
        all of them: the first to compile claims a marker in the pool's
        temporary directory; none draws progress (the parent's bar does)."""
        if os.getpid() == self.pid:
            return False
        if self.t0 is None:
            import tempfile

            self.t0 = time.perf_counter()
            try:
                os.close(os.open(os.path.join(tempfile.gettempdir(), "thinp-compile-notice"),
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                self.stream.write("thinp: compiling kernels (first run only; cached for later runs)...\n")
                self.stream.flush()
            except OSError:
                pass
        return True

    def notify(self, event):
        if self._in_worker():
            return
        if event.is_start and self.depth == 0:
            self.started = time.perf_counter()
        if event.is_end and self.depth == 1:
            self.compiling_s += time.perf_counter() - self.started
        if event.is_start:
            if self.t0 is None:
                self.t0 = time.perf_counter()
                self.stream.write("thinp: compiling kernels (first run only; cached for later runs)"
                                  + ("" if self.tty else "...\n"))
                self.stream.flush()
            self.depth += 1
        elif event.is_end:
            self.depth -= 1
            if self.depth == 0:
                self.done += 1
                if self.tty:
                    name = getattr(event.data.get("dispatcher"), "__name__", "") if event.data else ""
                    self.stream.write(f"\rthinp: compiling kernels (first run only): {self.done} done, "
                                      f"{self.compiling_s:.0f} s  {name[:30]:<30}")
                    self.stream.flush()

    def finish(self):
        if self.t0 is not None and os.getpid() == self.pid:
            self.stream.write(("\r" if self.tty else "") + f"thinp: compiled {self.done} kernels in "
                              f"{self.compiling_s:.1f} s; later runs load them from the cache"
                              + " " * 20 * self.tty + "\n")
            self.stream.flush()


@contextmanager
def announce_compiles(stream=None):
    """Report numba compiles in this process on ``stream`` (stderr) while the block runs."""
    from . import config

    listener = _Listener(stream or sys.stderr)
    registered = []

    def register():
        if not registered:
            from numba.core import event

            class Adapter(event.Listener):
                def on_start(self, ev):
                    listener.notify(ev)

                def on_end(self, ev):
                    listener.notify(ev)

            adapter = Adapter()
            event.register("numba:compile", adapter)
            registered.append((event, adapter))

    if "numba" in sys.modules:
        register()
    else:                       # numba is imported by the first kernel module: listen from then on
        config.on_numba_import.append(register)
    try:
        yield listener
    finally:
        if register in config.on_numba_import:
            config.on_numba_import.remove(register)
        if registered:
            event, adapter = registered[0]
            event.unregister("numba:compile", adapter)
        listener.finish()
