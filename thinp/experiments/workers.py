"""Worker processes for the experiments: compare's drivers and sweep's points."""
from __future__ import annotations

import os


def mp_context():
    """Fork where the OS can (no re-import, numba's compiled kernels
    inherited, no ``if __name__ == "__main__"`` guard needed), else spawn."""
    import multiprocessing as mp

    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def process_pool(n: int, initializer=None, initargs=(), ctx=None):
    """A pool of ``n`` worker processes in ``ctx`` (default :func:`mp_context`),
    all started on return -- so a caller makes it before starting any thread
    of its own (a progress bar's): forking a threaded process is unsafe."""
    import concurrent.futures as cf

    import shutil
    import signal
    import tempfile
    import weakref

    ctx = ctx or mp_context()
    # the workers' temporary files (pools, engine roots) go below one directory of ours,
    # removed with the pool even when a worker had to be killed mid-way
    tmp = tempfile.mkdtemp(prefix="thinp-workers-")
    # Ctrl-C waits while the workers are forked (an interrupt inside fork's hooks is reported
    # as "Exception ignored"); each worker unblocks once its own handlers are in place
    sigs = {signal.SIGINT, signal.SIGTERM}
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        ex = _pool_class()(max_workers=max(1, n), mp_context=ctx, initializer=_start_worker,
                           initargs=(initializer, initargs, tmp))
        ex._thinp_cleanup = weakref.finalize(ex, shutil.rmtree, tmp, True)
        if ctx.get_start_method() == "fork":
            ex.submit(int).result()      # a fork-context pool starts every worker on its first task
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    return ex


class _Stop(BaseException):
    """Raised in a worker told to stop while it runs a task."""


_IN_TASK = [False]


def _guarded(fn, *args, **kwargs):
    """A task in a worker: told to stop, it unwinds (its ``with`` and
    ``finally`` blocks remove what it made) and the worker exits."""
    _IN_TASK[0] = True
    try:
        return fn(*args, **kwargs)
    except _Stop:
        _die()
    finally:
        _IN_TASK[0] = False


def _die() -> None:
    """End this worker now, as SIGTERM's default action does (no atexit
    handlers, no flush of what the parent owns)."""
    import os
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)


def _start_worker(initializer, initargs, tmp) -> None:
    """In each worker: SIGTERM or SIGINT stops the task it runs (see
    :func:`_guarded`), or the idle worker at once; temporary files go below
    ``tmp``."""
    import os
    import signal
    import sys
    import tempfile

    def stop(signum, frame):
        if not _IN_TASK[0]:
            _die()
        # the interrupt may land inside a finaliser (llvmlite's, mid-compile): stopping is
        # what was asked for, so no "Exception ignored in __del__" report on the shared stderr
        sys.unraisablehook = lambda unraisable: None
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    if initializer is not None:
        initializer(*initargs)


def _pool_class():
    import concurrent.futures as cf

    class Pool(cf.ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            return super().submit(_guarded, fn, *args, **kwargs)

    return Pool


def stop_pool(ex, timeout: float = 1.0) -> None:
    """Stop a :func:`process_pool` now (Ctrl-C, an error): cancel what has
    not started, tell every worker to stop (SIGTERM: it cleans up and
    exits), wait up to ``timeout`` seconds, then kill what is left."""
    import time

    procs = list((getattr(ex, "_processes", None) or {}).values())   # CPython's worker table
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)
    cleanup = getattr(ex, "_thinp_cleanup", None)
    if cleanup is not None:
        cleanup()


def cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
