"""The busybox base and the build context of ``Dockerfile.test-image``,
recovered from the real image the recipe made (``test-docker-image.tar``)."""
from __future__ import annotations

import copy
import os

from thinp.image import Image, load, save


def base_and_context(image_tar, out_dir):
    """Write ``busybox.tar`` (the real image's bottom layer and first two
    history steps, tagged busybox:latest) and ``ctx/`` (README.md and
    .scripts/ with the bytes and modes the real ADD steps stored) under
    ``out_dir``; returns ``(busybox.tar path, context path, the real Image)``."""
    [real] = load(image_tar)
    cfg = copy.deepcopy(real.config)
    cfg["rootfs"]["diff_ids"] = cfg["rootfs"]["diff_ids"][:1]
    cfg["history"] = cfg["history"][:2]
    cfg.pop("container_config", None)
    cfg.pop("container", None)
    cfg["config"] = {k: v for k, v in cfg["config"].items() if k in ("Env", "Cmd")}
    base = Image.from_config(cfg, real.layers[:1], tags=["busybox:latest"])
    tar = os.path.join(out_dir, "busybox.tar")
    save([base], tar)
    ctx = os.path.join(out_dir, "ctx")
    os.makedirs(os.path.join(ctx, ".scripts"))
    for layer, prefix, dest in ((real.layers[1], "somefile.txt", "README.md"),
                                (real.layers[10], "root/.data/", ".scripts/")):
        for e, content in layer.walk(verify=False):
            if e.kind == "file" and e.path.startswith(prefix):
                name = dest if dest == "README.md" else dest + e.path[len(prefix):]
                p = os.path.join(ctx, name)
                with open(p, "wb") as f:
                    f.write(content.read())
                os.chmod(p, e.mode)
    return tar, ctx, real
