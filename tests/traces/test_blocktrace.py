"""Block-trace readers (ftrace block_rq_issue, blkparse) and ``thinp pool replay``."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from thinp.cli import main
from thinp.thin import ThinPool
from thinp.trace import DISCARD, READ, TRACE_DTYPE, WRITE
from thinp.traces import blocktrace

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
CAPTURED = DATA / "ext4-loop.block_rq_issue.txt.gz"

FTRACE = """\
# tracer: nop
    kworker/u4:2-57      [001] .....   812.123456: block_rq_issue: 7,0 WS 4096 () 2048 + 8 [kworker/u4:2]
       mkfs.ext4-9       [000] d..1.     1.000000: block_rq_issue: 7,0 DS 1048576 () 0 + 2048 none,0,0 [mkfs.ext4]
    kworker/1:1H-44      [001] .....     1.100000: block_rq_issue: 7,0 FF 0 () 0 + 0 none,0,0 [kworker/1:1H]
              dd-1       [000] .....     1.200000: block_rq_issue: 7,0 RA 16384 () 16 + 32 be,0,4 [dd]
              dd-1       [000] .....     1.300000: block_rq_issue: 8,0 W 4096 () 99 + 8 none,0,0 [dd]
              dd-1       [000] .....     1.300000: block_rq_complete: 7,0 W () 99 + 8 [0]
"""

BLKPARSE = """\
  7,0    1        1     0.000000000   512  Q  WS 2048 + 8 [jbd2/loop0-8]
  7,0    1        2     0.000010000   512  G  WS 2048 + 8 [jbd2/loop0-8]
  7,0    1        3     0.000123456   512  D  WS 2048 + 8 [jbd2/loop0-8]
  7,0    0        4     0.000200000   600  D   R 64 + 16 [cat]
  7,0    0        5     0.000300000   600  D   D 4096 + 2048 [fstrim]
  7,0    0        6     0.000400000   600  C  WS 2048 + 8 [0]
  7,0    0        7     0.000500000     0  D  FN 0 + 0 [kworker]
CPU0 (7,0):
 Reads Queued:           1,        8KiB  Writes Queued:           1,        4KiB
"""


def test_ftrace_handwritten():
    t = blocktrace.read_ftrace(FTRACE, dev_id=5)
    assert t.dtype == TRACE_DTYPE
    assert t["op"].tolist() == [WRITE, DISCARD, READ, WRITE]
    assert t["offset"].tolist() == [2048 * 512, 0, 16 * 512, 99 * 512]
    assert t["length"].tolist() == [4096, 1 << 20, 16384, 4096]
    assert (t["dev_id"] == 5).all()
    only = blocktrace.read_ftrace(FTRACE, device="7,0")
    assert len(only) == 3
    assert blocktrace.devices(FTRACE) == {"7,0": 3, "8,0": 1}
    assert blocktrace.detect_format(FTRACE) == "ftrace"


def test_blkparse_handwritten():
    t = blocktrace.read_blkparse(BLKPARSE)
    assert t["op"].tolist() == [WRITE, READ, DISCARD]
    assert t["offset"].tolist() == [2048 * 512, 64 * 512, 4096 * 512]
    assert t["length"].tolist() == [4096, 8192, 2048 * 512]
    assert len(blocktrace.read_blkparse(BLKPARSE, action="Q")) == 1
    assert blocktrace.detect_format(BLKPARSE) == "blkparse"
    with pytest.raises(ValueError, match="neither"):
        blocktrace.detect_format("hello\nworld\n")


def test_captured_ext4_trace():
    assert CAPTURED.exists(), "run scripts/capture_block_trace.sh"
    t = blocktrace.read(str(CAPTURED))
    counts = np.bincount(t["op"], minlength=3)
    assert len(t) > 100
    assert counts[WRITE] > 20 and counts[READ] > 0 and counts[DISCARD] > 0   # mkfs/fstrim discards
    assert (t["offset"] % 512 == 0).all() and (t["length"] % 512 == 0).all()
    assert int((t["offset"] + t["length"]).max()) <= 64 << 20                 # a 64 MiB loop device
    assert set(blocktrace.devices(str(CAPTURED))) == {"7,0"}


def test_pool_replay_cli(tmp_path, capsys):
    pool = str(tmp_path / "pool")
    assert main(["pool", "create", pool, "--data-size", "256M"]) == 0
    assert main(["pool", "replay", pool, str(CAPTURED), "--trace-format", "ftrace", "--dev-id", "3"]) == 0
    out = capsys.readouterr().out
    assert "into thin 3" in out and "nr_provisioned" in out
    t = blocktrace.read(str(CAPTURED))
    with ThinPool.open(pool, read_only=True) as p:
        assert p.devices() == [3]
        d = p.device(3)
        assert d.size >= int((t["offset"] + t["length"]).max())
        assert 0 < d.mapped_blocks * p.block_size <= 64 << 20
    # a handwritten blkparse trace into a second device, and a trace with nothing to replay
    bp = tmp_path / "t.blkparse"
    bp.write_text(BLKPARSE)
    assert main(["pool", "replay", pool, str(bp), "--dev-id", "4"]) == 0
    with ThinPool.open(pool, read_only=True) as p:
        assert p.devices() == [3, 4]
        assert p.device(4).mapped_blocks >= 1
    empty = tmp_path / "empty.txt"
    empty.write_text("  7,0 1 1 0.1 5 Q WS 8 + 8 [x]\n")
    assert main(["pool", "replay", pool, str(empty), "--trace-format", "blkparse"]) == 1
    assert "no blkparse block requests" in capsys.readouterr().err
