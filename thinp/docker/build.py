"""``docker build`` as the classic builder does it, over a :class:`~thinp.docker.daemon.Daemon`.

Each instruction after ``FROM`` is one commit on the previous step's image,
so each step leaves an image whose parent is the step before (the
intermediate images ``docker images`` hides):

* ``COPY``/``ADD``/``RUN`` (and ``WORKDIR`` when it makes the directory)
  run in a container made from the current image and commit its diff as one
  layer, exactly as ``docker commit`` would;
* ``ENV``, ``LABEL``, ``USER``, ``EXPOSE``, ``VOLUME``, ``CMD``,
  ``ENTRYPOINT``, ``ONBUILD``, ``STOPSIGNAL``, ``SHELL``, ``HEALTHCHECK``,
  ``MAINTAINER``, ``ARG`` change the config and add an ``empty_layer``
  history entry;
* history ``created_by`` is the shell plus ``#(nop) `` and the instruction
  for config steps (``/bin/sh -c #(nop)  CMD ["sh"]``), ``#(nop) ADD
  file:<hash> in <dest> `` for ADD/COPY, and the command for RUN.

The cache is the classic builder's: a step is a hit when a child image of
the current image has the same ``container_config`` -- the runtime config
with ``Cmd`` replaced by the step's command line, in which ADD/COPY name a
content hash of their sources (``file:``, ``dir:`` or ``multi:`` + sha256 of
the paths, modes, sizes and contents) and RUN names the build args it saw
(``|1 K=V /bin/sh -c ...``).  A RUN's files are not part of its key, as in
Docker.

RUN executes for real (``thinp capture``: strace in a kernel overlay mount
of the image, then the trace is replayed into the step's container) when the
machine allows it: root, overlayfs and the image's own ``/bin/sh``.  The
command runs as root with the config's ``Env`` exported and ``cd`` to the
``WorkingDir``.  Otherwise ``RUN --thinp-trace=FILE`` (an strace, path
relative to the context) or ``RUN --thinp-steps=FILE`` (a JSON list of view
operations) gives what the command did; without either, the build stops
saying why.

``FROM scratch`` starts from an image of no layers that leaves the store when
the build ends; the first step's image then has no parent, as in Docker.
Multi-stage builds (a second ``FROM``, ``COPY --from``) are refused.

The context honours ``.dockerignore`` (Go ``filepath.Match`` patterns,
``**``, ``!`` exceptions, the last match winning, a directory's exclusion
covering what is under it).  A source outside the context is refused.  A
failed build stores nothing: the daemon writes no state for a failed
command, so neither its images nor their layers stay.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
import shlex
import stat
import tarfile

from ..errors import ImageNotFoundError, NotSupportedError, ThinpError
from ..image import Image, Layer, Reference
from ..image import commit as _commit_image
from ..image.image import now_rfc3339
from ..image.changes import expand_words, key_value_pairs
from .dockerfile import EXPANDED, DockerfileError, Instruction, parse
from .steps import load_steps

__all__ = ["build", "BuildError", "DockerIgnore"]

_DEFAULT_SHELL = ["/bin/sh", "-c"]
_DEFAULT_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                 "NO_PROXY", "no_proxy")


class BuildError(ThinpError):
    """A build step failed (the message names the step's line)."""


# ================================================================ .dockerignore
class DockerIgnore:
    """``.dockerignore`` patterns; :meth:`excluded` takes a context-relative path."""

    def __init__(self, lines=()):
        self.patterns: list[tuple[bool, re.Pattern]] = []
        for ln in lines:
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            neg = ln.startswith("!")
            pat = os.path.normpath(ln[1:].strip() if neg else ln).lstrip("/")
            if pat in (".", ""):
                continue
            self.patterns.append((neg, re.compile(_translate(pat))))

    @classmethod
    def from_context(cls, ctx: str) -> "DockerIgnore":
        p = os.path.join(ctx, ".dockerignore")
        if not os.path.exists(p):
            return cls()
        with open(p, encoding="utf-8") as f:
            return cls(f.read().splitlines())

    def excluded(self, rel: str) -> bool:
        rel = rel.strip("/")
        parents = [rel]
        while "/" in parents[-1]:
            parents.append(parents[-1].rsplit("/", 1)[0])
        out = False
        for neg, rx in self.patterns:
            if any(rx.fullmatch(p) for p in parents):
                out = not neg
        return out


def _translate(pat: str) -> str:
    """A ``filepath.Match`` pattern with ``**`` as a regular expression."""
    out, i = [], 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**", i):
            i += 2
            if pat.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pat.find("]", i)
            if j < 0:
                raise ValueError(f".dockerignore: bad pattern {pat!r}")
            body = pat[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = j
        elif c == "\\" and i + 1 < len(pat):
            i += 1
            out.append(re.escape(pat[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


# ================================================================ the builder
def build(daemon, context: str, *, dockerfile: str | None = None, tags=(), build_args=(),
          no_cache: bool = False) -> dict:
    ctx = os.path.abspath(context)
    if not os.path.isdir(ctx):
        raise BuildError(f"unable to prepare context: path {context!r} not found")
    path = dockerfile or os.path.join(ctx, "Dockerfile")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise BuildError(f"unable to prepare context: unable to evaluate symlinks in Dockerfile path: "
                         f"lstat {path}: no such file or directory") from None
    for t in tags:
        Reference.parse(t)
    args = {}
    for a in build_args:
        k, eq, v = a.partition("=")
        args[k] = v if eq else os.environ.get(k, "")
    b = _Builder(daemon, ctx, DockerIgnore.from_context(ctx), args, no_cache)
    try:
        b.run(parse(text, name=os.path.basename(path)))
    finally:
        b.drop_scratch()
    if b.image is None:
        raise BuildError("no image was built")
    for t in tags:
        daemon.engine.tag(b.image.id, t)
        b.lines.append(f"Successfully tagged {Reference.parse(t).familiar}")
    unused = sorted(set(args) - b.used_args)
    if unused:
        b.lines.insert(-1 - len(tags), f"[Warning] One or more build-args {unused} were not consumed")
    return {"lines": b.lines, "id": b.image.id, "steps": b.steps, "cache_hits": b.cache_hits}


class _Builder:
    def __init__(self, daemon, ctx, ignore, build_args, no_cache):
        self.d, self.eng = daemon, daemon.engine
        self.ctx, self.ignore = ctx, ignore
        self.build_args = dict(build_args)
        self.used_args: set[str] = set()
        self.no_cache = no_cache
        self.image: Image | None = None
        self.scratch: Image | None = None
        self.config: dict = {}
        self.args: dict = {}            # declared ARGs of the stage -> value
        self.meta_args: dict = {}       # ARGs before FROM
        self.shell = list(_DEFAULT_SHELL)
        self.author = ""
        self.lines: list[str] = []
        self.steps = 0
        self.cache_hits = 0

    # ------------------------------------------------------------ driving
    def run(self, instructions: list[Instruction]) -> None:
        self.lines.append(f"Sending build context to Docker daemon  {_human(self._context_bytes())}")
        n = len(instructions)
        for i, ins in enumerate(instructions, 1):
            self.lines.append(f"Step {i}/{n} : {ins.original}")
            self.steps += 1
            try:
                self.dispatch(ins)
            except (DockerfileError, BuildError):
                raise
            except (ThinpError, OSError, ValueError) as e:
                raise BuildError(f"Step {i}/{n} (line {ins.line}) {ins.cmd}: {e}") from None
        if self.image is not None:
            self.lines.append(f"Successfully built {self.image.short_id}")

    def _environment(self) -> dict:
        env = {k: v for k, v in self.args.items() if v is not None}
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        return env

    def _scope(self) -> dict:
        """What ``$VAR`` means here: ARGs before the first FROM, else ARG and ENV values."""
        return self._environment() if self.image is not None else self.meta_args

    def _expanded(self, text: str, what: str) -> list[str]:
        return expand_words(text, self._scope(), what)

    def dispatch(self, ins: Instruction) -> None:
        if ins.cmd in EXPANDED and ins.cmd not in ("ARG", "ENV", "LABEL", "ADD", "COPY"):
            if ins.json is not None:
                ins.json = [" ".join(self._expanded(x, ins.cmd)) for x in ins.json]
            else:
                ins.args = " ".join(self._expanded(ins.args, ins.cmd))
        if ins.cmd == "FROM":
            return self._from(ins)
        if ins.cmd == "ARG":
            return self._arg(ins)
        if self.image is None:
            raise DockerfileError(f"line {ins.line}: no build stage in current context")
        getattr(self, "_" + ins.cmd.lower())(ins)

    # ------------------------------------------------------------ FROM / ARG
    def _from(self, ins):
        ws = ins.args.split()
        if len(ws) not in (1, 3) or (len(ws) == 3 and ws[1].lower() != "as"):
            raise DockerfileError(f"line {ins.line}: FROM takes an image and an optional 'AS name'")
        if self.image is not None:
            raise NotSupportedError(f"line {ins.line}: multi-stage builds are not supported by thinp's builder")
        if ws[0] == "scratch":
            self.image = self.scratch = self._scratch_image()
            self.config, self.args = {}, {}
            self.lines.append(" ---> (scratch)")
            return
        try:
            self.image = self.eng.image(ws[0])
        except ImageNotFoundError:
            raise BuildError(f"line {ins.line}: pull access denied for {ws[0]}: the image is not in this root "
                             f"(thinp docker pull it from a local registry first)") from None
        self.config = copy.deepcopy(self.image.container_config)
        self.args = {}
        self.lines.append(f" ---> {self.image.short_id}")
        for trigger in self.config.pop("OnBuild", None) or []:
            self.lines.append("# Executing 1 build trigger")
            [t] = parse("FROM x\n" + trigger)[1:]
            self.dispatch(t)
        self.config["OnBuild"] = None

    def _arg(self, ins):
        for w in self._expanded(ins.args, "ARG"):
            k, eq, v = w.partition("=")
            v = v if eq else None
            if k in self.build_args:
                v = self.build_args[k]
                self.used_args.add(k)
            if self.image is None:
                self.meta_args[k] = v
            else:
                self.args[k] = v if v is not None else self.meta_args.get(k)
        if self.image is not None:
            self._nop(ins, lambda cfg: None)

    # ------------------------------------------------------------ config steps
    def _env(self, ins):
        pairs = key_value_pairs(ins.args, self._scope(), "ENV")
        ins.args = " ".join(f"{k}={v}" for k, v in pairs)      # history shows the values

        def change(cfg):
            env = list(cfg.get("Env") or [])
            for k, v in pairs:
                env = [e for e in env if e.partition("=")[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        self._nop(ins, change)

    def _label(self, ins):
        pairs = key_value_pairs(ins.args, self._scope(), "LABEL")
        ins.args = " ".join(f"{k}={v}" for k, v in pairs)
        self._nop(ins, lambda cfg: cfg.__setitem__("Labels", {**(cfg.get("Labels") or {}), **dict(pairs)}))

    def _user(self, ins):
        self._nop(ins, lambda cfg: cfg.__setitem__("User", ins.args))

    def _expose(self, ins):
        def change(cfg):
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in ins.args.split():
                ports[p if "/" in p else p + "/tcp"] = {}
            cfg["ExposedPorts"] = ports
        self._nop(ins, change)

    def _volume(self, ins):
        vols = ins.json if ins.json is not None else ins.args.split()

        def change(cfg):
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{v: {} for v in vols}}
        self._nop(ins, change)

    def _cmd_form(self, ins) -> list[str]:
        if ins.json is not None:
            return list(ins.json)
        return self.shell + [ins.args] if ins.args else []

    def _cmd(self, ins):
        self._nop(ins, lambda cfg: cfg.__setitem__("Cmd", self._cmd_form(ins)))

    def _entrypoint(self, ins):
        ep = self._cmd_form(ins)

        def change(cfg):
            cfg["Entrypoint"] = ep or None
            if not self._cmd_set:
                cfg["Cmd"] = None
        self._nop(ins, change)

    _cmd_set = False

    def _onbuild(self, ins):
        trig = ins.args.split(None, 1)[0].upper()
        if trig in ("ONBUILD", "FROM", "MAINTAINER"):
            raise DockerfileError(f"line {ins.line}: {trig} isn't allowed as an ONBUILD trigger")
        self._nop(ins, lambda cfg: cfg.__setitem__("OnBuild", list(cfg.get("OnBuild") or []) + [ins.args]))

    def _stopsignal(self, ins):
        self._nop(ins, lambda cfg: cfg.__setitem__("StopSignal", ins.args))

    def _shell(self, ins):
        if ins.json is None:
            raise DockerfileError(f"line {ins.line}: SHELL requires the arguments to be in JSON form")
        self.shell = list(ins.json)
        self._nop(ins, lambda cfg: cfg.__setitem__("Shell", list(ins.json)))

    def _maintainer(self, ins):
        self.author = ins.args
        self._nop(ins, lambda cfg: None)

    def _healthcheck(self, ins):
        rest = ins.args.strip()
        if rest.upper() == "NONE":
            hc = {"Test": ["NONE"]}
        else:
            word, _, cmd = rest.partition(" ")
            if word.upper() != "CMD" or not cmd.strip():
                raise DockerfileError(f"line {ins.line}: HEALTHCHECK takes NONE or [OPTIONS] CMD command")
            cmd = cmd.strip()
            try:
                js = json.loads(cmd) if cmd.startswith("[") else None
            except ValueError:
                js = None
            hc = {"Test": ["CMD", *js] if isinstance(js, list) else ["CMD-SHELL", cmd]}
            for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod")):
                if flag in ins.flags:
                    hc[key] = _duration_ns(ins.flags[flag], ins.line)
            if "retries" in ins.flags:
                hc["Retries"] = int(ins.flags["retries"])
        self._nop(ins, lambda cfg: cfg.__setitem__("Healthcheck", hc))

    def _workdir(self, ins):
        wd = ins.args if ins.args.startswith("/") else os.path.join(self.config.get("WorkingDir") or "/", ins.args)
        wd = os.path.normpath(wd)
        self.config["WorkingDir"] = wd

        def mk(view):
            _mkdirs(view, wd, 0, 0)
        self._step(ins, self.shell[:2] + ["#(nop) ", f"WORKDIR {wd}"], fs=mk)

    # ------------------------------------------------------------ commits
    def _nop(self, ins, change):
        if ins.cmd == "CMD":
            self._cmd_set = True
        change(self.config)
        self._step(ins, self.shell[:2] + ["#(nop) ", ins.original.split(None, 1)[0].upper() + " " + ins.args])

    def _cache_config(self, cmd: list[str]) -> dict:
        cfg = copy.deepcopy(self.config)
        cfg["Cmd"] = cmd
        return cfg

    def _scratch_image(self) -> Image:
        """An image of no layers to start ``FROM scratch`` on; it is nobody's
        parent (a scratch build's first image has none, as in Docker) and
        leaves the store when the build ends."""
        cfg = {"architecture": "amd64", "os": "linux", "config": {}, "created": now_rfc3339(),
               "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
        return self.d.add_image(Image.from_config(cfg, []))

    def drop_scratch(self) -> None:
        if self.scratch is not None and self.scratch.id in self.eng.store.images:
            self.eng.rmi(self.scratch.id, force=True, prune=False)

    def _parent_id(self, img: Image) -> str | None:
        return None if img is self.scratch else img.id

    def _cached(self, key: dict) -> Image | None:
        if self.no_cache:
            return None
        parent = self._parent_id(self.image)
        kids = [i for i, im in self.eng.store.images.items() if im.parent is None and im.layers] \
            if parent is None else self.eng.store.children(parent)
        for cid in kids:
            child = self.eng.store.images[cid]
            if child.config.get("container_config") == key:
                return child
        return None

    def _step(self, ins, cache_cmd: list[str], fs=None, created_by: str | None = None):
        key = self._cache_config(cache_cmd)
        hit = self._cached(key)
        if hit is not None:
            self.cache_hits += 1
            self.lines += [" ---> Using cache", f" ---> {hit.short_id}"]
            self.image, self.config = hit, copy.deepcopy(hit.container_config)
            return
        base = self.image
        cid = ""
        if fs is not None:
            c = self.eng.create(base.id)
            cid = c.id
            if ins.cmd == "RUN":
                self.lines.append(f" ---> Running in {c.short_id}")
            try:
                fs(self.eng.mount(c))
                layer = self.eng.driver.diff(c.id, c.init_id)
                layer.scan()
            finally:
                self.eng.rm(c, force=True)
            if ins.cmd == "RUN":
                self.lines.append(f"Removing intermediate container {c.short_id}")
        else:
            layer = Layer.from_entries([])
        img = _commit_image(base, layer, container_config=self.config, author=self.author,
                            created_by=created_by or " ".join(cache_cmd), created=now_rfc3339())
        config = dict(img.config)
        config["container_config"] = key
        if cid:
            config["container"] = cid
        img = Image.from_config(config, img.layers, parent=self._parent_id(base))
        self.image = self.d.add_image(img)
        self.lines.append(f" ---> {self.image.short_id}")

    # ------------------------------------------------------------ COPY / ADD
    def _copy(self, ins):
        self._add_or_copy(ins, archive=False)

    def _add(self, ins):
        self._add_or_copy(ins, archive=True)

    def _add_or_copy(self, ins, archive: bool):
        if "from" in ins.flags:
            raise NotSupportedError(f"line {ins.line}: {ins.cmd} --from needs multi-stage builds, "
                                    f"which thinp's builder does not do")
        parts = ([" ".join(self._expanded(x, ins.cmd)) for x in ins.json] if ins.json is not None
                 else self._expanded(ins.args, ins.cmd))
        if len(parts) < 2:
            raise DockerfileError(f"line {ins.line}: {ins.cmd} requires at least two arguments")
        srcs, dest = parts[:-1], parts[-1]
        uid, gid = _chown(ins.flags.get("chown"), ins.line)
        wd = self.config.get("WorkingDir") or "/"
        dest_abs = dest if dest.startswith("/") else os.path.join(wd, dest)
        files = []
        for s in srcs:
            if re.match(r"^[a-z]+://", s):
                raise NotSupportedError(f"line {ins.line}: {ins.cmd} of a URL ({s}) needs the network")
            files += self._sources(ins, s)
        digest = _sources_digest(files)
        kind = "multi" if len(srcs) > 1 else ("dir" if files and files[0][2] == "dir" else "file")
        comment = f"{ins.cmd} {kind}:{digest} in {dest} "
        many = len(files) > 1 or dest.endswith("/") or any(t == "dir" for _a, _r, t in files[:1])

        def apply(view):
            dest_is_dir = many or dest_abs.endswith("/") or _isdir(view, dest_abs)
            for src_abs, top_rel, typ in files:
                if typ == "dir":
                    _mkdirs(view, dest_abs, uid, gid)
                    self._copy_tree(view, src_abs, dest_abs, uid, gid)
                elif archive and _is_archive(src_abs):
                    _mkdirs(view, dest_abs, uid, gid)
                    _extract(view, src_abs, dest_abs)
                else:
                    target = os.path.join(dest_abs, os.path.basename(src_abs)) if dest_is_dir else dest_abs
                    _mkdirs(view, os.path.dirname(target) or "/", uid, gid)
                    _copy_file(view, src_abs, target, uid, gid)
        self._step(ins, self.shell[:2] + ["#(nop) " + comment], fs=apply)

    def _sources(self, ins, src: str) -> list[tuple[str, str, str]]:
        """``(absolute path, context-relative path, "file"|"dir")`` for a source (globs allowed)."""
        rel = os.path.normpath(src.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            raise BuildError(f"line {ins.line}: {ins.cmd} failed: forbidden path outside the build context: "
                             f"{src}")
        if any(ch in rel for ch in "*?["):
            found = []
            for top, dirs, fs in os.walk(self.ctx):
                for n in dirs + fs:
                    r = os.path.relpath(os.path.join(top, n), self.ctx)
                    if fnmatch.fnmatchcase(r, rel) and not self.ignore.excluded(r):
                        found.append(r)
            if not found:
                raise BuildError(f"line {ins.line}: {ins.cmd} failed: no source files were specified ({src})")
            rels = sorted(found)
        else:
            rels = [rel]
        out = []
        for r in rels:
            p = os.path.join(self.ctx, r) if r != "." else self.ctx
            real = os.path.realpath(p)
            if real != self.ctx and not real.startswith(self.ctx + os.sep):
                raise BuildError(f"line {ins.line}: {ins.cmd} failed: forbidden path outside the build context: "
                                 f"{src} ({real})")
            if not os.path.lexists(p) or (r != "." and self.ignore.excluded(r)):
                raise BuildError(f"line {ins.line}: {ins.cmd} failed: file not found in build context or "
                                 f"excluded by .dockerignore: stat {src}: file does not exist")
            out.append((p, r, "dir" if os.path.isdir(real) else "file"))
        return out

    def _copy_tree(self, view, src_dir: str, dest: str, uid: int, gid: int) -> None:
        for top, dirs, files in os.walk(src_dir):
            dirs.sort()
            rel_top = os.path.relpath(top, src_dir)
            for n in sorted(dirs + files):
                p = os.path.join(top, n)
                r = os.path.relpath(p, self.ctx)
                if self.ignore.excluded(r):
                    if n in dirs:
                        dirs.remove(n)
                    continue
                target = os.path.normpath(os.path.join(dest, rel_top, n))
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    _replace(view, target)
                    view.symlink(os.readlink(p), target, uid=uid, gid=gid)
                elif stat.S_ISDIR(st.st_mode):
                    if not _isdir(view, target):
                        _replace(view, target)
                        view.mkdir(target, stat.S_IMODE(st.st_mode), uid=uid, gid=gid)
                elif stat.S_ISREG(st.st_mode):
                    _copy_file(view, p, target, uid, gid)

    # ------------------------------------------------------------ RUN
    def _run(self, ins):
        env = self._environment()
        used = sorted(k for k in self.args if self.args[k] is not None and k not in _DEFAULT_ARGS)
        cmd = list(ins.json) if ins.json is not None else self.shell + [ins.args]
        prefix = [f"|{len(used)}"] + [f"{k}={self.args[k]}" for k in used] if used else []
        self.used_args.update(used)
        trace, steps = ins.flags.get("thinp-trace"), ins.flags.get("thinp-steps")

        def apply(view):
            from ..traces import strace

            if trace is not None or steps is not None:
                p = os.path.normpath(os.path.join(self.ctx, trace or steps))
                if not os.path.exists(p):
                    raise BuildError(f"line {ins.line}: RUN --thinp-{'trace' if trace else 'steps'}={trace or steps}: "
                                     f"no such file in the context")
                if trace is not None:
                    strace.replay(strace.read(p).ops, view)
                else:
                    for op in load_steps(p):
                        getattr(view, op[0])(*op[1:])
                self.lines.append(f" ---> replayed {'trace' if trace else 'steps'} {trace or steps} "
                                  f"(not executed)")
                return
            script = ins.args if ins.json is None else shlex.join(ins.json)
            pre = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            wd = self.config.get("WorkingDir")
            line = (f"export {pre}; " if pre else "") + (f"cd {shlex.quote(wd)} && " if wd else "") + script
            try:
                argv = ["/bin/sh", "-c", line] if ins.json is not None else [line]
                code, tr, printed = self.d.execute(
                    self.image, argv, hint="give what it did with RUN --thinp-trace=FILE or RUN --thinp-steps=FILE")
            except NotSupportedError as e:
                raise BuildError(f"line {ins.line}: {e}") from None
            self.lines += printed.splitlines()
            try:
                if code != 0:
                    raise BuildError(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}")
                strace.replay(strace.read(tr).ops, view)
            finally:
                import shutil

                shutil.rmtree(os.path.dirname(os.path.dirname(tr)), ignore_errors=True)
        self._step(ins, prefix + cmd, fs=apply, created_by=" ".join(prefix + cmd))

    def _context_bytes(self) -> int:
        n = 0
        for top, dirs, files in os.walk(self.ctx):
            for f in files:
                r = os.path.relpath(os.path.join(top, f), self.ctx)
                if not self.ignore.excluded(r):
                    n += os.lstat(os.path.join(top, f)).st_size
        return n


# ================================================================ view helpers
def _isdir(view, path: str) -> bool:
    try:
        return stat.S_ISDIR(view.stat(path).st_mode)
    except OSError:
        return False


def _replace(view, path: str) -> None:
    try:
        st = view.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BuildError(f"cannot replace the directory {path} with a non-directory")
    view.unlink(path)


def _mkdirs(view, path: str, uid: int, gid: int) -> None:
    cur = ""
    for part in [p for p in path.split("/") if p]:
        cur += "/" + part
        if not _isdir(view, cur):
            view.mkdir(cur, 0o755, uid=uid, gid=gid)


def _copy_file(view, src: str, target: str, uid: int, gid: int) -> None:
    st = os.stat(src)
    _replace(view, target)
    view.create(target, stat.S_IMODE(st.st_mode), uid=uid, gid=gid)
    with open(src, "rb") as f:
        _write_stream(view, target, f)
    view.chmod(target, stat.S_IMODE(st.st_mode))


def _write_stream(view, target: str, f) -> None:
    """Copy a readable file into ``target`` in 1 MiB writes."""
    off = 0
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            break
        view.write(target, off, chunk)
        off += len(chunk)


def _is_archive(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _extract(view, src: str, dest: str) -> None:
    """ADD's auto-extraction of a local tar (plain, gzip, bzip2 or xz)."""
    with tarfile.open(src, "r:*") as tf:
        for m in tf:
            name = os.path.normpath(m.name.lstrip("/"))
            if name == "." or name.startswith(".."):
                continue
            target = os.path.join(dest, name)
            _mkdirs(view, os.path.dirname(target), 0, 0)
            if m.isdir():
                if not _isdir(view, target):
                    view.mkdir(target, m.mode & 0o7777, uid=m.uid, gid=m.gid)
            elif m.issym():
                _replace(view, target)
                view.symlink(m.linkname, target, uid=m.uid, gid=m.gid)
            elif m.islnk():
                _replace(view, target)
                view.link(os.path.join(dest, os.path.normpath(m.linkname.lstrip("/"))), target)
            elif m.isreg():
                _replace(view, target)
                view.create(target, m.mode & 0o7777, uid=m.uid, gid=m.gid)
                _write_stream(view, target, tf.extractfile(m))


def _duration_ns(text: str, line: int) -> int:
    """Go's ``time.ParseDuration`` for the units a Dockerfile uses (``30s``, ``1m30s``, ``500ms``)."""
    units = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise DockerfileError(f"line {line}: bad duration {text!r}")
    return int(sum(float(a) * units[b] for a, b in parts))


def _chown(spec: str | None, line: int) -> tuple[int, int]:
    if not spec:
        return 0, 0
    u, _, g = spec.partition(":")
    try:
        uid = 0 if u == "root" else int(u)
        gid = uid if not g else (0 if g == "root" else int(g))
    except ValueError:
        raise NotSupportedError(f"line {line}: --chown={spec}: thinp's builder takes numeric ids (or root)") from None
    return uid, gid


def _sources_digest(files) -> str:
    h = hashlib.sha256()
    for src_abs, _rel, typ in files:
        walk = [(src_abs, "")] if typ == "file" else [
            (os.path.join(t, n), os.path.relpath(os.path.join(t, n), src_abs))
            for t, ds, fs in sorted(os.walk(src_abs)) for n in sorted(ds + fs)]
        for p, r in walk:
            st = os.lstat(p)
            h.update(f"{r}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_size}\0".encode())
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
    return h.hexdigest()


def _human(n: int) -> str:
    from .output import human_size

    return human_size(n)
