"""Dockerfile instructions applied to an image config, as ``docker commit -c``.

``apply_changes(container_config, ["CMD ...", "ENV A=b", ...])`` returns a new
``config`` dict (the ``config`` member of an image config: ``Cmd``,
``Entrypoint``, ``Env``, ``ExposedPorts``, ``Labels``, ``OnBuild``, ``User``,
``Volumes``, ``WorkingDir``).  The accepted instructions are Docker's list for
``commit``/``import``: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, USER,
VOLUME, WORKDIR.  Anything else is a ``ValueError``.

As in a Dockerfile: JSON-array (exec) or shell form for CMD/ENTRYPOINT/VOLUME;
``ENTRYPOINT`` clears an inherited ``Cmd`` unless a ``CMD`` came earlier in
the same list; ``$VAR``/``${VAR}`` (and ``${VAR:-x}``, ``${VAR:+x}``) expand
from the current ``Env`` in ENV, EXPOSE, LABEL, USER, VOLUME and WORKDIR;
``ENV``/``LABEL`` take ``k=v`` pairs (with quotes) or the legacy ``ENV k v``.
"""
from __future__ import annotations

import copy
import json
import posixpath
import re

__all__ = ["apply_changes", "COMMIT_INSTRUCTIONS", "expand_words", "key_value_pairs"]

COMMIT_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD",
                       "USER", "VOLUME", "WORKDIR")
_SHELL = ["/bin/sh", "-c"]
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _env_dict(cfg: dict) -> dict:
    out = {}
    for item in cfg.get("Env") or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _expand(text: str, env: dict) -> str:
    def sub(m):
        name = m.group(1) or m.group(4)
        op, word = m.group(2), m.group(3)
        val = env.get(name)
        if op == "-":
            return val if val else word
        if op == "+":
            return word if val else ""
        return val or ""
    return _VAR.sub(sub, text)


def _words(text: str, env: dict | None, what: str) -> list[str]:
    """Split like the Dockerfile word parser: quotes, backslash escapes, $VAR."""
    words: list[str] = []
    cur: list[str] = []
    have = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            if have:
                words.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        have = True
        if c == "\\" and i + 1 < n:
            cur.append(text[i + 1])
            i += 2
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ValueError(f"{what}: unterminated single quote in {text!r}")
            cur.append(text[i + 1:j])
            i = j + 1
        elif c == '"':
            j = i + 1
            part = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$':
                    part.append(text[j + 1])
                    j += 2
                else:
                    part.append(text[j])
                    j += 1
            if j >= n:
                raise ValueError(f"{what}: unterminated double quote in {text!r}")
            s = "".join(part)
            cur.append(_expand(s, env) if env is not None else s)
            i = j + 1
        elif c == "$" and env is not None:
            m = _VAR.match(text, i)
            if m:
                cur.append(_expand(m.group(0), env))
                i = m.end()
            else:
                cur.append(c)
                i += 1
        else:
            cur.append(c)
            i += 1
    if have:
        words.append("".join(cur))
    return words


def _pairs(args: str, env: dict, what: str, legacy_ok: bool) -> list[tuple[str, str]]:
    words = _words(args, env, what)
    if not words:
        raise ValueError(f"{what} requires at least one argument")
    if "=" not in words[0]:
        if not legacy_ok:
            raise ValueError(f"{what} requires key=value pairs, got {args!r}")
        first, _, rest = args.strip().partition(" ")
        if not rest.strip():
            raise ValueError(f"{what} {first} needs a value")
        # ``ENV name value with spaces``: the value is the rest, verbatim but expanded
        value = " ".join(_words(rest, env, what)) if rest.strip() else ""
        return [(_words(first, env, what)[0], value)]
    out = []
    for w in words:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise ValueError(f"{what}: {w!r} is not a key=value pair")
        out.append((k, v))
    return out


def _json_or_shell(args: str, what: str) -> list[str]:
    s = args.strip()
    if s.startswith("["):
        try:
            val = json.loads(s)
        except json.JSONDecodeError:
            val = None
        if isinstance(val, list) and all(isinstance(x, str) for x in val):
            return val
    if not s:
        raise ValueError(f"{what} requires an argument")
    return _SHELL + [s]


def expand_words(text: str, env: dict | None, what: str = "instruction") -> list[str]:
    """``text`` split into words as the Dockerfile word parser splits them
    (quotes, backslash escapes), ``$VAR`` forms expanded from ``env`` outside
    single quotes (``env=None``: no expansion).  The Dockerfile builder
    (:mod:`thinp.docker.build`) uses it for every instruction it expands."""
    return _words(text, env, what)


def key_value_pairs(args: str, env: dict, what: str, legacy_ok: bool = True) -> list[tuple[str, str]]:
    """``ENV``/``LABEL`` pairs: ``k=v k2="v 2"``, or ``k value with spaces``
    when ``legacy_ok``; values expanded from ``env``."""
    return _pairs(args, env, what, legacy_ok)


def _ports(args: str, env: dict) -> list[str]:
    out = []
    for w in _words(args, env, "EXPOSE"):
        port, _, proto = w.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp", "sctp"):
            raise ValueError(f"EXPOSE: invalid protocol {proto!r} in {w!r}")
        lo, dash, hi = port.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise ValueError(f"EXPOSE: invalid port {w!r}") from None
        if not (0 < a <= 65535 and 0 < b <= 65535 and a <= b):
            raise ValueError(f"EXPOSE: port out of range in {w!r}")
        out.extend(f"{p}/{proto}" for p in range(a, b + 1))
    if not out:
        raise ValueError("EXPOSE requires at least one argument")
    return out


def apply_changes(config: dict | None, changes) -> dict:
    """Return a copy of ``config`` with each Dockerfile instruction applied."""
    cfg = copy.deepcopy(config) if config else {}
    cmd_set = False
    for change in changes or ():
        line = change.strip()
        if not line:
            continue
        instr, _, args = line.partition(" ")
        if "\t" in instr:
            instr, _, more = instr.partition("\t")
            args = more + " " + args
        instr = instr.upper()
        args = args.strip()
        env = _env_dict(cfg)
        if instr not in COMMIT_INSTRUCTIONS:
            raise ValueError(f"{instr} is not a valid change command")
        if instr == "CMD":
            cfg["Cmd"] = _json_or_shell(args, "CMD")
            cmd_set = True
        elif instr == "ENTRYPOINT":
            s = args.strip()
            cfg["Entrypoint"] = _json_or_shell(s, "ENTRYPOINT") if s else None
            if not cmd_set:
                cfg["Cmd"] = None
        elif instr == "ENV":
            pairs = _pairs(args, env, "ENV", legacy_ok=True)
            envlist = list(cfg.get("Env") or [])
            for k, v in pairs:
                envlist = [e for e in envlist if e.partition("=")[0] != k]
                envlist.append(f"{k}={v}")
            cfg["Env"] = envlist
        elif instr == "LABEL":
            labels = dict(cfg.get("Labels") or {})
            for k, v in _pairs(args, env, "LABEL", legacy_ok=False):
                labels[k] = v
            cfg["Labels"] = labels
        elif instr == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in _ports(args, env):
                ports[p] = {}
            cfg["ExposedPorts"] = ports
        elif instr == "ONBUILD":
            sub, _, rest = args.partition(" ")
            sub = sub.upper()
            if not sub:
                raise ValueError("ONBUILD requires an instruction")
            if sub in ("ONBUILD", "FROM", "MAINTAINER"):
                raise ValueError(f"{sub} isn't allowed as an ONBUILD trigger")
            cfg["OnBuild"] = list(cfg.get("OnBuild") or []) + [f"{sub} {rest.strip()}".strip()]
        elif instr == "USER":
            words = _words(args, env, "USER")
            if len(words) != 1:
                raise ValueError(f"USER requires exactly one argument, got {args!r}")
            cfg["User"] = words[0]
        elif instr == "VOLUME":
            s = args.strip()
            vols = None
            if s.startswith("["):
                try:
                    vols = json.loads(s)
                except json.JSONDecodeError:
                    vols = None
                if not (isinstance(vols, list) and all(isinstance(v, str) for v in vols)):
                    vols = None
            if vols is None:
                vols = _words(s, env, "VOLUME")
            if not vols or any(not v.strip() for v in vols):
                raise ValueError("VOLUME specified can not be an empty string")
            volumes = dict(cfg.get("Volumes") or {})
            for v in vols:
                volumes[v] = {}
            cfg["Volumes"] = volumes
        elif instr == "WORKDIR":
            words = _words(args, env, "WORKDIR")
            if len(words) != 1:
                raise ValueError(f"WORKDIR requires exactly one argument, got {args!r}")
            wd = words[0]
            if not wd.startswith("/"):
                wd = posixpath.join(cfg.get("WorkingDir") or "/", wd)
            cfg["WorkingDir"] = posixpath.normpath(wd) if wd != "/" else "/"
    return cfg
