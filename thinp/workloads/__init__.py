"""Workloads: the declarative format, built-in scenarios, runs on a driver, and trace readers.

``load(source)`` (a TOML path or a scenario name), ``scenarios()``,
``run(workload, driver, scale=...)`` -> :class:`RunResult`; strace readers in
:mod:`thinp.workloads.strace`, block-trace readers in :mod:`thinp.workloads.blocktrace`.
"""
from .format import ImageSpec, LayerSpec, Step, Workload, WorkloadError, load, loads
from .run import RunResult, run
from .scenarios import scenarios

__all__ = ["Workload", "ImageSpec", "LayerSpec", "Step", "WorkloadError", "load", "loads",
           "scenarios", "run", "RunResult"]
