"""A Dockerfile parser, as moby's ``buildkit/frontend/dockerfile/parser``.

:func:`parse` turns the text into :class:`Instruction` rows (``cmd`` upper
case, ``args`` text, ``flags`` such as ``--chown``, ``json`` list for the
exec form, ``line`` the line the instruction starts on):

* parser directives (``# escape=`` with ``\\`` or a backtick) before anything else;
* comment lines (``#`` first non-blank) are dropped, also inside a
  continuation; empty lines inside a continuation are skipped;
* a line ending in the escape character continues on the next;
* ``RUN``/``CMD``/``ENTRYPOINT``/``SHELL``/``COPY``/``ADD``/``VOLUME`` take
  the JSON (exec) form when their text is a JSON array of strings;
* ``--name=value`` flags before the arguments.

:func:`expand` substitutes ``$VAR``, ``${VAR}``, ``${VAR:-word}`` and
``${VAR:+word}`` (a backslash escapes ``$``), as the builder does for ADD,
COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ARG.
Errors are :class:`DockerfileError` with the line number.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import ThinpError

__all__ = ["Instruction", "DockerfileError", "parse", "expand", "INSTRUCTIONS", "EXPANDED"]

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
#: instructions whose arguments the builder expands with ARG/ENV values
EXPANDED = ("ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ARG")
_JSON_FORMS = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileError(ThinpError, ValueError):
    """A Dockerfile that does not parse (the message names the line)."""


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int
    original: str
    flags: dict = field(default_factory=dict)
    json: list | None = None

    def __str__(self) -> str:
        return self.original


def parse(text: str, name: str = "Dockerfile") -> list[Instruction]:
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # parser directives: only at the very top, before any comment or instruction
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i].strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"{name} line {i + 1}: invalid escape token {m.group(2)!r} "
                                      f"(must be ` or \\)")
            escape = m.group(2)
        i += 1
    out: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        start = i + 1
        i += 1
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = []
        cur = raw.rstrip()
        while cur.endswith(escape):
            parts.append(cur[:-1])
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i >= len(lines):
                cur = ""
                break
            cur = lines[i].rstrip()
            i += 1
        parts.append(cur)
        logical = "".join(parts).strip()
        word, _, rest = logical.partition(" ")
        if "\t" in word:
            word, _, more = word.partition("\t")
            rest = more + " " + rest
        cmd = word.upper()
        if cmd not in INSTRUCTIONS:
            raise DockerfileError(f"{name} line {start}: unknown instruction: {word}")
        rest = rest.strip()
        flags = {}
        while rest.startswith("--"):
            tok, _, after = rest.partition(" ")
            k, eq, v = tok[2:].partition("=")
            if not k:
                break
            flags[k] = v if eq else "true"
            rest = after.strip()
        if not rest and cmd not in ("CMD", "ENTRYPOINT"):
            raise DockerfileError(f"{name} line {start}: {cmd} requires at least one argument")
        js = None
        if cmd in _JSON_FORMS and rest.startswith("["):
            try:
                v = json.loads(rest)
            except ValueError:
                v = None
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                js = v
        out.append(Instruction(cmd, rest, start, logical, flags, js))
    if not out:
        raise DockerfileError(f"{name}: the Dockerfile has no instructions")
    first = next((x for x in out if x.cmd != "ARG"), None)
    if first is None or first.cmd != "FROM":
        where = first.line if first is not None else out[0].line
        raise DockerfileError(f"{name} line {where}: no build stage in current context "
                              f"(the first instruction after ARGs must be FROM)")
    return out


def expand(text: str, env: dict, line: int | None = None) -> str:
    """Substitute variables from ``env`` (``\\$`` stays a literal ``$``)."""
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if c == "$":
            m = _VAR.match(text, i)
            if m:
                name = m.group(1) or m.group(4)
                op, word = m.group(2), m.group(3)
                val = env.get(name)
                if op == "-":
                    out.append(val if val else word)
                elif op == "+":
                    out.append(word if val else "")
                else:
                    out.append(val or "")
                i = m.end()
                continue
            if text.startswith("${", i):
                where = f"line {line}: " if line else ""
                raise DockerfileError(f"{where}bad substitution in {text!r}")
        out.append(c)
        i += 1
    return "".join(out)


def words(text: str) -> list[str]:
    """Split on blanks, keeping quoted strings whole (quotes removed)."""
    out, cur, quote, have = [], [], None, False
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"' and i + 1 < len(text):
                i += 1
                cur.append(text[i])
            else:
                cur.append(c)
        elif c in "\"'":
            quote, have = c, True
        elif c.isspace():
            if cur or have:
                out.append("".join(cur))
                cur, have = [], False
        elif c == "\\" and i + 1 < len(text):
            i += 1
            cur.append(text[i])
        else:
            cur.append(c)
        i += 1
    if quote:
        raise DockerfileError(f"unmatched quote in {text!r}")
    if cur or have:
        out.append("".join(cur))
    return out


def key_values(text: str, what: str, line: int) -> list[tuple[str, str]]:
    """``ENV``/``LABEL``/``ARG`` pairs: ``k=v k2="v 2"`` or the legacy ``ENV k v``."""
    ws = words(text)
    if ws and "=" not in ws[0]:
        if what == "ARG":
            return [(ws[0], None)]
        if len(ws) < 2:
            raise DockerfileError(f"line {line}: {what} {ws[0]} needs a value")
        return [(ws[0], text.split(None, 1)[1].strip())]
    out = []
    for w in ws:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise DockerfileError(f"line {line}: {what} expects key=value, not {w!r}")
        out.append((k, v))
    return out
