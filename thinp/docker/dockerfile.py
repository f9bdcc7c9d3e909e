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

The builder expands ``$VAR``, ``${VAR}``, ``${VAR:-word}`` and
``${VAR:+word}`` in the arguments of :data:`EXPANDED` with the word parser
of :func:`thinp.image.changes.expand_words` (the one ``docker commit -c``
uses).  Errors are :class:`DockerfileError` with the line number.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from ..errors import ThinpError

__all__ = ["Instruction", "DockerfileError", "parse", "INSTRUCTIONS", "EXPANDED"]

INSTRUCTIONS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
#: instructions whose arguments the builder expands with ARG/ENV values
EXPANDED = ("ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ARG")
_JSON_FORMS = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


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
