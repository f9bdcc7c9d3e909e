"""Experiments built on the workloads and the cost model (see :mod:`.compare`)."""
