"""A runner module whose worker dies on ``vfs`` (as a process killed by the
OOM killer would), for thinp.compare's process pool.

So that the outcome does not depend on timing, the other drivers' runs wait
until the vfs worker has announced its death (``$THINP_TEST_CRASH_MARKER``,
written just before it exits): they are still running when the pool breaks,
and the pool ends them too."""
import os
import time

from thinp.workloads import load, run as _run  # noqa: F401  (load is the runner API)


def run(workload, driver, **kw):
    marker = os.environ["THINP_TEST_CRASH_MARKER"]
    if driver == "vfs":
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os._exit(137)
    deadline = time.monotonic() + 300        # a safety net only: the pool kills this worker
    while time.monotonic() < deadline:
        if os.path.exists(marker):
            time.sleep(0.05)                 # wait here to be ended with the broken pool
        else:
            time.sleep(0.01)
    return _run(workload, driver, **kw)
