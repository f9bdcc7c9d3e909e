"""Workloads: the declarative format, built-in scenarios, runs on a driver, and trace readers.

* :func:`load` (a TOML path or a built-in scenario name) -> :class:`Workload`
  (``name, image: ImageSpec, containers, steps: list[Step], seed, description``);
  the TOML format is documented in :mod:`thinp.workloads.format`, and
  ``examples/webapp.toml`` is the ``webapp`` scenario written as a file.
* :func:`scenarios`: webapp, ci-build, package-install, big-file-update,
  many-small-files, file-tree, read-heavy (:mod:`thinp.workloads.scenarios`).
* :func:`run` (workload, driver, root=, scale=, progress=, **driver_options) ->
  :class:`RunResult` (driver, workload, metrics, per_container, phases, error).
  ``progress(done, total)`` is called per container created and per container run.
* :mod:`thinp.traces.strace` (strace logs) and :mod:`thinp.traces.blocktrace`
  (ftrace ``block_rq_issue`` / blkparse text -> ``thinp.TRACE_DTYPE``, replayed by
  ``thinp pool replay``).
* Built-in image profile ``debian-minbase``: ``thinp/data/profiles/debian-minbase.tsv.gz``,
  made by ``scripts/make_profiles.py`` from ``../shared/fixtures/rootfs/debian-bookworm-minbase.csv.gz``.
"""
from .format import ImageSpec, LayerSpec, Step, Workload, WorkloadError, loads
from .run import PoolFullError, RunResult, run
from .check import dry_run, load
from .scenarios import scenarios

__all__ = ["Workload", "ImageSpec", "LayerSpec", "Step", "WorkloadError", "load", "loads",
           "scenarios", "run", "RunResult", "PoolFullError", "dry_run"]
