"""Readers for recorded workloads, low in the stack (they import nothing above
:mod:`thinp.trace`):

* :mod:`thinp.traces.strace` -- ``strace -f -tt -y`` logs, as file operations;
* :mod:`thinp.traces.blocktrace` -- ftrace ``block_rq_issue`` and blkparse
  text, as a block trace (:data:`thinp.trace.TRACE_DTYPE`).
"""
