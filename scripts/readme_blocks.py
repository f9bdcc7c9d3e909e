"""The README's code blocks, run as a reader would run them.

Shared by ``scripts/make_readme.py`` (writes the shown outputs back into
README.md) and ``tests/test_readme.py`` (runs every block and checks the
shown outputs, allowing only for timings).

Conventions in README.md:

* A fenced block is ``python``, ``sh``, ``toml`` or plain (an output shown
  on its own).  ``toml`` blocks are loaded by
  ``tests/workloads/test_readme_examples.py``; here they are not run.
* Lines starting ``#> `` right after a command (``sh``) or a ``print``
  (``python``) are its shown output; :func:`run_blocks` collects what the
  code printed in their place.
* ``<!-- readme-test: slow REASON -->`` on the line before a block: run
  only with ``--slow`` (and by the generator with ``--slow``);
  ``<!-- readme-test: skip REASON -->``: never run, for the reason given.
* Paths under ``/tmp/`` are taken below a short sandbox directory (a long
  one would wrap rich's table titles differently), ``examples/``
  and ``docs/`` are the project's, and every block of one README run shares
  the sandbox, in README order (``thinp pool status /tmp/pool`` sees the
  pool an earlier block made).
* ``thinp`` runs as ``python -m thinp`` and ``python`` as this Python, so
  an uninstalled checkout runs the blocks too; ``pip install`` and
  ``pytest`` lines are CI's own and are not run.  ``[--opt]`` in a command
  is an optional argument shown for reference: it is left out.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
OUT = "#> "


@dataclass
class Block:
    lang: str
    start: int                  # line index of the first code line
    lines: list                 # code lines (without the fences)
    mark: str = ""              # "", "slow" or "skip"
    reason: str = ""
    outputs: dict = field(default_factory=dict)   # line index of a command -> [shown output lines]

    @property
    def code(self) -> str:
        return "\n".join(self.lines) + "\n"


def parse(text: str) -> list[Block]:
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        b = Block(m.group(1) or "text", i + 1, lines[i + 1:j])
        prev = lines[i - 1] if i else ""
        mm = re.match(r"<!-- readme-test: (slow|skip) (.*?) -->", prev)
        if mm:
            b.mark, b.reason = mm.group(1), mm.group(2)
        blocks.append(b)
        i = j + 1
    return blocks


def statements(b: Block) -> list[tuple[int, str, list[str]]]:
    """``(first line index, source, shown output lines)`` of each command of
    an ``sh`` block, or of each top-level statement group of a ``python``
    block that is followed by ``#>`` lines."""
    out, cur, first = [], [], None
    k = 0
    while k < len(b.lines):
        ln = b.lines[k]
        if ln.startswith(OUT) or ln == OUT.rstrip():
            shown = []
            while k < len(b.lines) and (b.lines[k].startswith(OUT) or b.lines[k] == OUT.rstrip()):
                shown.append(b.lines[k][len(OUT):])
                k += 1
            out.append((first if first is not None else k, "\n".join(cur), shown))
            cur, first = [], None
            continue
        if b.lang == "sh":
            if cur and not cur[-1].endswith("\\"):
                out.append((first, "\n".join(cur), None))
                cur, first = [], None
        if first is None:
            first = k
        cur.append(ln)
        k += 1
    if cur:
        out.append((first, "\n".join(cur), None))
    return out


# ------------------------------------------------------------------ running
def sandboxed(text: str, sandbox: str) -> str:
    return re.sub(r"(?<![\w.])/tmp/", sandbox.rstrip("/") + "/", text)


def unsandboxed(text: str, sandbox: str) -> str:
    return text.replace(sandbox.rstrip("/") + "/", "/tmp/")


def _shell_command(src: str) -> str | None:
    """The command to run for one ``sh`` statement, or None (not run)."""
    body = re.sub(r"\\\n", " ", src)
    body = re.sub(r"(?m)^\s*#.*$", "", body).strip()
    if not body:
        return None
    words = shlex.split(body, comments=True)
    if not words or words[0] in ("pip", "pytest") or body.startswith("pip "):
        return None
    body = re.sub(r"\s\[[^\]]*\]", "", body)          # [--repair]: optional, left out
    body = re.sub(r"(^|&&\s*|;\s*)thinp\s", lambda m: f"{m.group(1)}{shlex.quote(sys.executable)} -m thinp ", body)
    body = re.sub(r"(^|&&\s*|;\s*)python\s", lambda m: f"{m.group(1)}{shlex.quote(sys.executable)} ", body)
    return body


def run_sh(src: str, sandbox: str, timeout: float = 1800) -> str:
    cmd = _shell_command(sandboxed(src, sandbox))
    if cmd is None:
        return ""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "COLUMNS": "120"}
    r = subprocess.run(["bash", "-c", cmd], cwd=sandbox, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"README command failed ({r.returncode}): {src}\n{r.stderr[-2000:]}")
    return unsandboxed(r.stdout, sandbox)


def run_python(src: str, ns: dict, sandbox: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(sandboxed(src, sandbox), "README.md", "exec"), ns)
    return unsandboxed(buf.getvalue(), sandbox)


def prepare_sandbox(sandbox: str) -> None:
    for name in ("examples", "docs"):
        link = os.path.join(sandbox, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(ROOT, name), link)


_MARK = "\x00readme-output-ends\x00"


def _python_with_marks(b: Block) -> tuple[str, list[tuple[int, list[str]]]]:
    """The block's code with each ``#>`` group replaced by a statement that
    prints a mark (at the indentation of the line before it), and the
    groups: ``(line index of the group, shown lines)``."""
    code, groups, k = [], [], 0
    while k < len(b.lines):
        ln = b.lines[k]
        if ln.startswith(OUT) or ln == OUT.rstrip():
            first, shown = k, []
            while k < len(b.lines) and (b.lines[k].startswith(OUT) or b.lines[k] == OUT.rstrip()):
                shown.append(b.lines[k][len(OUT):])
                k += 1
            prev = next((c for c in reversed(code) if c.strip()), "")
            indent = prev[:len(prev) - len(prev.lstrip())]
            code.append(f"{indent}print({_MARK!r})")
            groups.append((first, shown))
            continue
        code.append(ln)
        k += 1
    return "\n".join(code) + "\n", groups


def run_block(b: Block, sandbox: str, ns: dict) -> list[tuple[int, list[str] | None, str]]:
    """Run ``b``: ``(line index, shown output or None, printed output)`` per
    command (``sh``) or per ``#>`` group (``python``: the whole block runs as
    one program; what it printed between two groups belongs to the second)."""
    results = []
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        if b.lang == "sh":
            for k, src, shown in statements(b):
                results.append((k, shown, run_sh(src, sandbox)))
        elif b.lang == "python":
            code, groups = _python_with_marks(b)
            printed = run_python(code, ns, sandbox).split(_MARK + "\n")
            for (k, shown), text in zip(groups, printed):
                results.append((k, shown, text))
            results.append((len(b.lines), None, printed[-1]))
    finally:
        os.chdir(cwd)
    return results


# ------------------------------------------------------------------ comparing
_TIMING = [
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:s|ms)\b"), "<time>"),                  # 3.7 s, 12 ms
    (re.compile(r"\b\d+(?:\.\d+)? points/s\b"), "<rate> points/s"),
]


def normalise(text: str) -> str:
    """Output with timings blanked and trailing spaces dropped."""
    out = []
    for ln in text.rstrip("\n").split("\n"):
        for pat, rep in _TIMING:
            ln = pat.sub(rep, ln)
        out.append(ln.rstrip())
    return "\n".join(out)
