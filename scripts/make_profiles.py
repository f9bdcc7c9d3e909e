#!/usr/bin/env python3
"""Derive the built-in image profile ``debian-minbase`` (package data).

Source: ``../shared/fixtures/rootfs/debian-bookworm-minbase.csv.gz`` (a manifest of a
Debian bookworm ``debootstrap --variant=minbase`` rootfs: path, type, size, mode,
uid, gid, nlink, inode_group, target, xattrs).  We keep only what a profile needs:
path, type (f d l c p h), size, mode (octal), uid, gid, and the link target (symlink
text, device "maj:min", or for ``h`` the first path of the hard-link group).  The
fixture itself is not copied.  Output: ``thinp/data/profiles/debian-minbase.tsv.gz``.

    python scripts/make_profiles.py [FIXTURES_DIR]
"""
import csv
import gzip
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC_REL = "rootfs/debian-bookworm-minbase.csv.gz"


def main(argv):
    fixtures = pathlib.Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared" / "fixtures"
    src = fixtures / SRC_REL
    out = ROOT / "thinp" / "data" / "profiles" / "debian-minbase.tsv.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    first = {}
    n = 0
    with gzip.open(src, "rt", newline="") as f, gzip.GzipFile(out, "wb", mtime=0) as raw:
        o = raw
        o.write(f"# debian-minbase: derived from ../shared/fixtures/{SRC_REL} by scripts/make_profiles.py\n"
                "# path\ttype\tsize\tmode\tuid\tgid\ttarget\n".encode())
        for r in csv.DictReader(f):
            p = r["path"].removeprefix("./")
            if not p or p == ".":
                continue
            t = r["type"]
            target = r["target"]
            if t == "f" and r["inode_group"]:
                g = r["inode_group"]
                if g in first:
                    t, target = "h", first[g]
                else:
                    first[g] = p
            if t not in "fdlcph":
                continue
            mode = r["mode"].removeprefix("0o")
            size = r["size"] if t == "f" else "0"
            o.write(f"{p}\t{t}\t{size}\t{mode}\t{r['uid'] or 0}\t{r['gid'] or 0}\t{target}\n".encode())
            n += 1
    print(f"{out}: {n} entries from {src}")


if __name__ == "__main__":
    main(sys.argv)
