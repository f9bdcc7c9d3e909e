"""Workloads: strace readers and replays (see :mod:`thinp.workloads.strace`)."""
