"""``Daemon``: an :class:`~thinp.Engine` whose state survives between commands.

A root directory (``~/.local/share/thinp/docker`` by default) plays the part
of dockerd's ``/var/lib/docker``::

    state.json            the engine's state (below), replaced atomically
    state.lock            fcntl lock: one command at a time per root
    image/layers/<hex>.tar   every layer blob, uncompressed, named by DiffID
    image/configs/<hex>.json every image config, verbatim, named by image ID
    containers/<id>/<n>.strace | <n>.json   what ran in each container
    driver/               the storage driver's scratch directory

``state.json`` holds ``driver`` and ``storage_opts``, a sequence counter,
``images`` (id, parent, layer DiffIDs and sizes, seq), ``refs`` (canonical
reference -> image ID) and ``containers`` (id, name, image, config, state,
exit code, the ordered list of what ran in it, seq).

thinp's drivers model their disks in memory, so a command re-creates the
driver from the state: images and containers are re-added in the order they
were first made (``seq``) and each container's recorded operations are
replayed.  That is deterministic, so the driver reaches the state it had
when the previous command ended; the counters a command reports
(``stats()``) are the difference between the engine's metrics after the
replay and after the command.  One consequence: what was removed is gone
from the replayed disk as if it had never been written, so the physical
bytes a command starts from are those of a disk that never held the removed
images (a real loop file keeps the freed blocks until discard).

Nothing is half-stored: the state file is written under a temporary name,
fsync'd and renamed only when a command succeeded, and blobs the state does
not name (left by an interrupted pull, load or build) are removed when the
next command opens the root.

Driver choice, as dockerd's: without ``storage_driver`` an existing root
keeps the driver it was made with.  Naming another driver for an existing
root is refused (dockerd would start on an empty tree beside the old one and
the old images would seem lost; thinp keeps one driver per root).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import tempfile
from typing import Sequence

from ..engine import Engine
from ..errors import ImageConflictError, ImageNotFoundError, NotSupportedError, PoolBusyError, ThinpError
from ..image import Image, Layer, Reference
from ..image.image import now_rfc3339
from ..image.layer import FileSource
from .steps import load_steps

__all__ = ["Daemon", "DEFAULT_ROOT", "DEFAULT_DRIVER", "parse_storage_opts", "STATE_VERSION"]

DEFAULT_ROOT = os.path.join("~", ".local", "share", "thinp", "docker")
DEFAULT_DRIVER = "overlay2"
STATE_VERSION = 1
_STATE, _LOCK = "state.json", "state.lock"


def parse_storage_opts(opts: Sequence[str]) -> dict:
    """``["dm.basesize=10G", "size=20G"]`` -> ``{"basesize": "10G", "size": "20G"}``:
    dockerd's ``--storage-opt`` ``k=v`` pairs; a ``<driver>.`` or ``dm.``
    prefix is dropped, ``true``/``false`` become booleans."""
    out = {}
    for o in opts or ():
        k, sep, v = o.partition("=")
        k = k.strip()
        if not sep or not k:
            raise ValueError(f"invalid storage option {o!r}: want key=value")
        k = k.split(".", 1)[1] if "." in k else k
        out[k.replace("-", "_")] = {"true": True, "false": False}.get(v.lower(), v)
    return out


class Daemon:
    """One command's hold on a root (see the module docstring).

    ``with Daemon(root, storage_driver=None, storage_opts=()) as d:`` locks the
    root, rebuilds the engine (``d.engine``), and on a clean exit writes the
    state; an exception leaves the state file as it was."""

    def __init__(self, root=None, storage_driver: str | None = None, storage_opts: Sequence[str] | dict = ()):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root or DEFAULT_ROOT)))
        existed = os.path.exists(self.root)
        os.makedirs(self.root, exist_ok=True)
        self._lockf = open(os.path.join(self.root, _LOCK), "a+")
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockf.close()
            raise PoolBusyError(f"{self.root}: another thinp docker command holds its lock") from None
        self.engine: Engine | None = None
        self.transfer: dict = {}      # bytes_transferred / bytes_stored of a pull or push
        try:
            self._open(storage_driver, storage_opts)
        except BaseException:
            self.close()
            if not existed:             # a root this command would have made: none is left
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    # ------------------------------------------------------------ open/close
    def _open(self, storage_driver, storage_opts) -> None:
        state = self._read_state()
        opts = storage_opts if isinstance(storage_opts, dict) else parse_storage_opts(storage_opts)
        if state is not None:
            prior = state["driver"]
            if storage_driver and storage_driver != prior:
                raise NotSupportedError(
                    f"error initializing graphdriver: {self.root} holds the images of storage driver "
                    f"{prior!r}, not {storage_driver!r}: use --storage-driver {prior} or another --root")
            if opts and opts != state["storage_opts"]:
                raise NotSupportedError(
                    f"error initializing graphdriver: {self.root} was made with --storage-opt "
                    f"{_opts_text(state['storage_opts']) or '(none)'}, not {_opts_text(opts)}")
            self.driver_name, self.storage_opts = prior, dict(state["storage_opts"])
        else:
            self.driver_name = storage_driver or DEFAULT_DRIVER
            self.storage_opts = opts
            state = {"version": STATE_VERSION, "driver": self.driver_name, "storage_opts": self.storage_opts,
                     "seq": 0, "images": [], "refs": {}, "containers": []}
        self.state = state
        self._gc_files(state)
        scratch = os.path.join(self.root, "driver")
        shutil.rmtree(scratch, ignore_errors=True)
        self.engine = Engine(self.driver_name, root=self.root, **self.storage_opts)
        self._seq = {im["id"]: im["seq"] for im in state["images"]}
        self._ops = {c["id"]: list(c["ops"]) for c in state["containers"]}
        self._extra = {c["id"]: {k: c.get(k) for k in ("cmd", "exit_code", "finished")}
                       for c in state["containers"]}
        self._replay(state)
        self.engine.sync()
        self.baseline = self.engine.metrics()

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.write_state()
        finally:
            self.close()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            shutil.rmtree(os.path.join(self.root, "driver"), ignore_errors=True)
        if self._lockf is not None:
            fcntl.flock(self._lockf, fcntl.LOCK_UN)
            self._lockf.close()
            self._lockf = None

    # ------------------------------------------------------------ state file
    def _read_state(self):
        path = os.path.join(self.root, _STATE)
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ThinpError(f"{path}: not a thinp docker state file ({e})") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ThinpError(f"{path}: state version {state.get('version') if isinstance(state, dict) else '?'} "
                             f"is not {STATE_VERSION}")
        return state

    def _path(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    def _gc_files(self, state) -> None:
        """Remove blobs, configs and container records the state does not name."""
        layers = {d[7:] + ".tar" for im in state["images"] for d in im["layers"]}
        configs = {im["id"][7:] + ".json" for im in state["images"]}
        cdirs = {c["id"] for c in state["containers"]}
        for sub, keep in (("image/layers", layers), ("image/configs", configs), ("containers", cdirs)):
            d = self._path(*sub.split("/"))
            os.makedirs(d, exist_ok=True)
            for name in os.listdir(d):
                if name not in keep:
                    p = os.path.join(d, name)
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)

    def _next_seq(self) -> int:
        self.state["seq"] += 1
        return self.state["seq"]

    def _seq_new_images(self) -> None:
        """Give images added since the last call their place in the replay
        order (before any container made after them)."""
        for image_id in self.engine.store.images:
            if image_id not in self._seq:
                self._seq[image_id] = self._next_seq()

    def _persist_layer(self, layer: Layer) -> str:
        final = self._path("image", "layers", layer.diff_id[7:] + ".tar")
        if not os.path.exists(final):
            tmp = final + ".partial"
            with layer.open_uncompressed() as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        return final

    def write_state(self) -> None:
        """Record the engine's images, tags and containers (atomically)."""
        eng = self.engine
        images = []
        self._seq_new_images()
        for img in eng.store.images.values():
            seq = self._seq[img.id]
            cfg = self._path("image", "configs", img.id[7:] + ".json")
            if not os.path.exists(cfg):
                _write_atomic(cfg, img.config_bytes)
            sizes = []
            for layer in img.layers:
                self._persist_layer(layer)
                if layer.size is None:
                    layer.scan()
                sizes.append([layer.size, layer.tar_size, layer.nr_entries])
            images.append({"id": img.id, "parent": img.parent, "layers": img.diff_ids, "sizes": sizes,
                           "seq": seq})
        containers = []
        for c in eng.containers.values():
            x = self._extra.setdefault(c.id, {})
            containers.append({"id": c.id, "name": c.name, "image_id": c.image_id, "image": c.image,
                               "created": c.created, "config": c.config, "state": c.state,
                               "ops": self._ops.get(c.id, []), "seq": x.setdefault("seq", self._next_seq()),
                               **{k: x.get(k) for k in ("cmd", "exit_code", "finished")}})
        for old in self.state["containers"]:     # keep the seq a container was first given
            for new in containers:
                if new["id"] == old["id"]:
                    new["seq"] = old["seq"]
        state = dict(self.state, images=sorted(images, key=lambda i: i["seq"]),
                     refs=dict(eng.store.refs), containers=sorted(containers, key=lambda c: c["seq"]))
        _write_atomic(self._path(_STATE), json.dumps(state, indent=1, sort_keys=True).encode())
        self.state = state
        self._gc_files(state)

    # ------------------------------------------------------------ replay
    def _replay(self, state) -> None:
        eng = self.engine
        events = [(im["seq"], 0, im) for im in state["images"]] + \
                 [(c["seq"], 1, c) for c in state["containers"]]
        for _seq, kind, rec in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == 0:
                with open(self._path("image", "configs", rec["id"][7:] + ".json"), "rb") as f:
                    cfg = f.read()
                layers, parent = [], None
                for d, (size, tar_size, n) in zip(rec["layers"], rec["sizes"]):
                    layer = Layer(FileSource(self._path("image", "layers", d[7:] + ".tar")), diff_id=d,
                                  parent=parent)
                    layer.size, layer.tar_size, layer.nr_entries = size, tar_size, n
                    layer.blob_size, layer.compression = tar_size, "none"
                    layers.append(layer)
                    parent = layer
                _add_images(eng, [Image(cfg, layers, (), rec["parent"])])
            else:
                c = eng.create(rec["image_id"], name=rec["name"], id=rec["id"])
                c.image, c.created, c.config = rec["image"], rec["created"], rec["config"]
                self._extra[c.id]["seq"] = rec["seq"]
                for op in rec["ops"]:
                    self._apply_ops(c, op)
                if rec["state"] == "running":
                    eng.start(c)
                else:
                    eng.stop(c)
                    c.state = rec["state"]
        for ref, image_id in state["refs"].items():
            if image_id in eng.store.images:
                eng.tag(image_id, ref)

    def _apply_ops(self, c, op: dict) -> dict:
        path = self._path(*op["file"].split("/"))
        if op["kind"] == "strace":
            from ..traces import strace

            view = self.engine.mount(c)
            return strace.replay(strace.read(path).ops, view)
        steps = load_steps(path)
        self.engine.exec(c, steps)
        return {"applied": len(steps)}

    def _record_ops(self, c, kind: str, src_path: str) -> dict:
        """Copy a trace/steps file under the container's directory, apply it, record it."""
        if kind == "steps":
            load_steps(src_path)          # a bad file is named as the user gave it
        elif not os.path.isfile(src_path):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", src_path)
        ops = self._ops.setdefault(c.id, [])
        d = self._path("containers", c.id)
        os.makedirs(d, exist_ok=True)
        name = f"{len(ops) + 1}.{'strace' if kind == 'strace' else 'json'}"
        shutil.copyfile(src_path, os.path.join(d, name))
        rec = {"kind": kind, "file": f"containers/{c.id}/{name}"}
        counts = self._apply_ops(c, rec)
        ops.append(rec)
        return counts

    # ------------------------------------------------------------ metrics
    def stats(self) -> dict:
        """What the command did: the metric deltas since the root was opened,
        plus the driver's current physical/metadata bytes and, for
        devicemapper, Data% and Meta% of the pool."""
        self.engine.sync()
        now = self.engine.metrics()
        keys = ("bytes_written", "copy_up_bytes", "copy_up_count", "cow_bytes", "cow_count",
                "layers_created", "layers_shared", "layers_removed", "layer_bytes_applied")
        out = {k: now[k] - self.baseline[k] for k in keys}
        out["physical_bytes"] = now["physical_bytes"]
        out["metadata_bytes"] = now["metadata_bytes"]
        pool = getattr(self.engine.driver, "pool", None)
        if pool is not None:
            st = pool.status()
            out["data_percent"] = round(st.data_percent, 2)
            out["metadata_percent"] = round(st.metadata_percent, 2)
        return out

    # ------------------------------------------------------------ image verbs
    def images(self, all: bool = False) -> list[dict]:
        """``docker images``; without ``all`` the intermediate images a build
        leaves (untagged, with children) are hidden, as Docker hides them."""
        store = self.engine.store
        rows = self.engine.images()
        if not all:
            rows = [r for r in rows if r["tag"] != "<none>" or not store.children(r["image_id"])]
        return rows

    def image_id(self, ref: str) -> str:
        return self.engine.store.resolve(ref)[0]

    def tag(self, source: str, target: str) -> None:
        Reference.parse(target)          # the CLI checks the new name before asking the daemon
        self.engine.tag(source, target)

    def rmi(self, refs: Sequence[str], force: bool = False, prune: bool = True) -> list[tuple[str, str]]:
        """``docker rmi``.  Unlike dockerd, ``force`` does not delete an image a
        container still uses (the container could not be re-created from the
        state without it); it untags it only when other tags remain."""
        store = self.engine.store
        out = []
        for r in refs:
            image_id, ref = store.resolve(r)
            users = sorted(store.users.get(image_id, ()))
            if force and users and (ref is None or len(store.tags_of(image_id)) <= 1):
                raise ImageConflictError(
                    f"conflict: unable to delete {image_id[7:19]} (cannot be forced) - image is being used by "
                    f"container {users[0][:12]} (thinp docker keeps it while the container exists)")
            out += self.engine.rmi(r, force=force, prune=prune)
        return out

    def history(self, ref: str) -> list[dict]:
        from ..image import history

        img = self.engine.image(ref)
        return history(img, self.engine.store.images)

    def inspect(self, names: Sequence[str]) -> list[dict]:
        return [self.engine.inspect(n) for n in names]

    def save(self, refs: Sequence[str], out: str) -> int:
        return self.engine.save(list(refs), out)

    def load(self, path: str) -> list[tuple[str, str]]:
        """``docker load``: ``("Loaded image", tag)`` or ``("Loaded image ID", id)`` rows."""
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
        imgs = self.engine.load(path)
        rows = []
        for img in imgs:
            tags = self.engine.store.tags_of(img.id)
            rows += [("Loaded image", t) for t in tags] or [("Loaded image ID", img.id)]
        return rows

    def import_(self, tar: str, ref: str | None = None, changes: Sequence[str] = (), message: str = "") -> str:
        if ref:
            Reference.parse(ref)
        return self.engine.import_(tar, ref, changes=changes, message=message, source=tar).id

    def add_image(self, img: Image, tags: Sequence[str] = ()) -> Image:
        """Add a built or pulled image and its layers (all or nothing)."""
        return _add_images(self.engine, [img], tags)[0]

    def pull(self, ref: str, registry: str | None = None, platform: str = "linux/amd64") -> dict:
        from .transfer import pull

        return pull(self, ref, registry=registry, platform=platform)

    def push(self, ref: str, registry: str | None = None, chunk_size: int = 0) -> dict:
        from .transfer import push

        return push(self, ref, registry=registry, chunk_size=chunk_size)

    def search(self, term: str, registry: str) -> list[dict]:
        from .transfer import search

        return search(self, term, registry=registry)

    def build(self, context: str, dockerfile: str | None = None, tags: Sequence[str] = (),
              build_args: Sequence[str] = (), no_cache: bool = False) -> dict:
        from .build import build

        return build(self, context, dockerfile=dockerfile, tags=tags, build_args=build_args, no_cache=no_cache)

    # ------------------------------------------------------------ containers
    def create(self, image: str, *, name: str | None = None, cmd: Sequence[str] = ()) -> "object":
        eng = self.engine
        try:
            img = eng.image(image)
        except ImageNotFoundError:
            raise ImageNotFoundError(f"Unable to find image '{_familiar(image)}' locally") from None
        if name is not None:
            _check_name(name)
        self._seq_new_images()
        c = eng.create(img.id, name=name)
        c.image = image
        if cmd:
            c.config = dict(c.config, Cmd=list(cmd))
        self._extra[c.id] = {"cmd": list(cmd) or _default_cmd(c.config), "exit_code": None, "finished": None,
                             "seq": self._next_seq()}
        return c

    def run(self, image: str, cmd: Sequence[str] = (), *, name: str | None = None, trace: str | None = None,
            steps: str | None = None, rm: bool = False) -> dict:
        """``docker run``: create, then what ran in it -- a trace (``trace``),
        a JSON list of ``[method, *args]`` steps (``steps``), or the command
        executed for real under strace in a kernel overlay mount of the
        image (``thinp capture``; root only) -- then the container exits."""
        c = self.create(image, name=name, cmd=cmd)
        eng = self.engine
        eng.start(c)
        how, code, counts, printed = "none", 0, {}, ""
        command = list(cmd) or _default_cmd(c.config)
        if trace is not None:
            how, counts = "trace", self._record_ops(c, "strace", trace)
        elif steps is not None:
            how, counts = "steps", self._record_ops(c, "steps", steps)
        elif command:
            how = "executed"
            code, tr, printed = self.execute(eng.image(c.image_id), command)
            try:
                counts = self._record_ops(c, "strace", tr)
            finally:
                shutil.rmtree(os.path.dirname(os.path.dirname(tr)), ignore_errors=True)
        eng.stop(c)
        self._extra[c.id].update(exit_code=code, finished=now_rfc3339())
        out = {"id": c.id, "name": c.name, "how": how, "exit_code": code, "replay": counts, "output": printed}
        if rm:
            self.rm([c.id])
        return out

    def execute(self, img: Image, command: Sequence[str],
                hint: str = "give what it did with --thinp-trace FILE or --thinp-steps FILE") -> tuple[int, str, str]:
        """Run ``command`` in the image for real (``thinp capture``); returns
        ``(exit code, path of the rewritten trace in a temporary directory,
        what the command printed)``."""
        from ..image import save
        from ..validate import capture as cap

        shown = shlex.join(command)
        why = cap.refusal()
        if why:
            raise NotSupportedError(f"cannot execute {shown!r} here ({why}); {hint}")
        tmp = tempfile.mkdtemp(prefix="thinp-run-")
        try:
            tar = os.path.join(tmp, "image.tar")
            save([Image(img.config_bytes, img.layers)], tar)
            res = cap.capture(tar, shown if len(command) > 1 else command[0], os.path.join(tmp, "out"))
        except NotSupportedError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotSupportedError(f"cannot execute {shown!r} here ({e}); {hint}") from None
        except ThinpError as e:        # no /bin/sh in the image, a trace that misses what ran
            shutil.rmtree(tmp, ignore_errors=True)
            raise NotSupportedError(f"cannot execute {shown!r} in {img.short_id} ({e}); {hint}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return res.returncode, os.fspath(res.trace), res.stdout + res.stderr

    def diff(self, container: str) -> list:
        return self.engine.diff(container)

    def commit(self, container: str, repo_tag: str | None = None, *, message: str = "", author: str = "",
               changes: Sequence[str] = ()) -> str:
        if repo_tag:
            Reference.parse(repo_tag)
        return self.engine.commit(container, repo_tag, message=message, author=author, changes=changes).id

    def export(self, container: str, out) -> int:
        return self.engine.export(container, out)

    def ps(self, all: bool = False) -> list[dict]:
        rows = []
        for r in self.engine.ps(all=all):
            x = self._extra.get(r["container_id"], {})
            rows.append({**r, "command": shlex.join(x.get("cmd") or []), "exit_code": x.get("exit_code"),
                         "finished": x.get("finished")})
        return rows

    def rm(self, names: Sequence[str], force: bool = False) -> list[str]:
        out = []
        for n in names:
            c = self.engine.container(n)
            self.engine.rm(c, force=force)
            self._ops.pop(c.id, None)
            self._extra.pop(c.id, None)
            out.append(n)
        return out

    # ------------------------------------------------------------ system
    def info(self) -> dict:
        eng = self.engine
        states = [c.state for c in eng.containers.values()]
        return {"Containers": len(states), "Running": states.count("running"), "Paused": 0,
                "Stopped": len(states) - states.count("running"), "Images": len(eng.store.images),
                "Storage Driver": eng.driver.name, "driver_status": list(eng.driver.status()[1:]),
                "Docker Root Dir": self.root, "Storage Options": dict(self.storage_opts)}

    def system_df(self) -> list[dict]:
        """``docker system df``'s rows: Images, Containers, Local Volumes, Build Cache."""
        eng = self.engine
        df = eng.df()
        used_images = {c.image_id for c in eng.containers.values()}
        img_size = df["images"]["layers_bytes"]      # distinct layers, counted once
        reclaim = sum(v["unique_size"] for i, v in df["images"]["images"].items() if i not in used_images)
        running = [c for c in eng.containers.values() if c.state == "running"]
        c_size = sum(v["size_rw"] for v in df["containers"].values())
        c_reclaim = sum(v["size_rw"] for i, v in df["containers"].items()
                        if eng.containers[i].state != "running")
        return [
            {"type": "Images", "total": len({r["image_id"] for r in self.images()}), "active": len(used_images),
             "size": img_size, "reclaimable": reclaim},
            {"type": "Containers", "total": len(eng.containers), "active": len(running), "size": c_size,
             "reclaimable": c_reclaim},
            {"type": "Local Volumes", "total": 0, "active": 0, "size": 0, "reclaimable": 0},
            {"type": "Build Cache", "total": 0, "active": 0, "size": 0, "reclaimable": 0},
        ]


# ================================================================ helpers
def _add_images(engine: Engine, images, tags: Sequence[str] = ()):
    """The engine's all-or-nothing add, every image with ``tags``."""
    return engine.add_images(images, tags_for=lambda _i: list(tags))


def _default_cmd(config: dict) -> list[str]:
    return list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])


def _familiar(ref: str) -> str:
    try:
        return Reference.parse(ref).familiar
    except ValueError:
        return ref


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
        raise ValueError(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")


def _opts_text(opts: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(opts.items()))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

