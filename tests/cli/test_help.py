"""Every ``--help`` prints and exits 0 (argparse formats help strings with
``%``, so a bare ``Data%`` in one crashed ``thinp --help`` with a traceback)."""
import argparse

import pytest

from thinp.cli import build_parser, main


def _commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


COMMANDS = sorted(set(_commands(build_parser())))


def test_there_are_commands():
    assert {("compare",), ("overcommit",), ("sweep",), ("pool",)} <= set(COMMANDS)


@pytest.mark.parametrize("argv", [()] + COMMANDS, ids=lambda a: " ".join(a) or "thinp")
def test_help_prints(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: thinp") and len(out) > 80


def test_bare_thinp_prints_usage(capsys):
    assert main([]) == 2
    assert "usage: thinp" in capsys.readouterr().out
