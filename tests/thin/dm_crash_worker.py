"""Child process for test_dm_crash: random dm-metadata operations, committing
often; after each commit it appends ``trans_id digest`` to the log."""
from __future__ import annotations

import hashlib
import os
import random
import sys

from thinp.thin.pool_metadata import PoolMetadata


def digest(model) -> str:
    h = hashlib.sha1()
    for d in sorted(model):
        h.update(f"{d}:{sorted(model[d].items())};".encode())
    return h.hexdigest()


def main(path: str, log: str, seed: int) -> None:
    rng = random.Random(seed)
    if os.path.exists(path):
        md = PoolMetadata.open(path)
        model = {}
        from thinp.thin.dm_metadata import DmMetadata
        with DmMetadata.open(path) as r:
            for d in r.devices():
                v, p, _ = r.mappings(d)
                model[d.dev_id] = dict(zip(v.tolist(), p.tolist()))
    else:
        md = PoolMetadata.format(path, nr_metadata_blocks=2048, nr_data_blocks=20000, data_block_sectors=128)
        model = {}
    md.sync = False
    with open(log, "a", buffering=1) as out:
        while True:
            devs = sorted(model)
            op = rng.random()
            if op < 0.1 or not devs:
                d = rng.randrange(32)
                if d not in model:
                    md.create_thin(d)
                    model[d] = {}
            elif op < 0.2:
                d = rng.randrange(32)
                if d not in model:
                    o = rng.choice(devs)
                    md.create_snap(d, o)
                    model[d] = dict(model[o])
            elif op < 0.25 and len(devs) > 2:
                d = rng.choice(devs)
                md.delete(d)
                del model[d]
            elif op < 0.6:
                d = rng.choice(devs)
                b = rng.randrange(15000)
                for vb in range(b, b + rng.randrange(1, 200)):
                    p = md.alloc_data()
                    if p is None:
                        break
                    md.insert(d, vb, p)
                    model[d][vb] = p
            elif op < 0.8:
                d = rng.choice(devs)
                b = rng.randrange(15000)
                for vb in range(b, b + rng.randrange(1, 300)):
                    md.remove(d, vb)
                    model[d].pop(vb, None)
            else:
                t = md.sb.trans_id
                md.set_transaction_id(t, t + 1)
                md.commit()
                out.write(f"{t + 1} {digest(model)}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
