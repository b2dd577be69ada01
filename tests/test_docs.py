"""The documentation says what the code does: docs/cli.md's option tables are the parsers' own.

Regenerate them after changing an option: ``python -m tests.test_docs`` (rewrites docs/cli.md).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI_MD = REPO / "docs" / "cli.md"
COMMANDS = ("run", "archive", "serve", "evaluate", "train", "models")


def _subparser(command: str) -> argparse.ArgumentParser:
    from pipeline.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def option_table(command: str) -> str:
    """The markdown table of a command's options: names as typed, then the help as ``--help`` prints it."""
    parser = _subparser(command)
    rows = ["| option | help |", "|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
            names = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
        else:
            names = f"`{(action.metavar or action.dest).upper()}`"
        text = (action.help or "").replace("%%", "%").replace("|", "\\|")
        if action.choices and not action.metavar:
            names = ", ".join(f"`{o} {{{','.join(map(str, action.choices))}}}`" for o in action.option_strings)
        rows.append(f"| {names.replace('|', chr(92) + '|')} | {text} |")
    return "\n".join(rows) + "\n"


def usage(command: str) -> str:
    """The command's usage block as ``--help`` prints it on a 100-column terminal."""
    parser = _subparser(command)
    formatter = parser.formatter_class(prog=parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return "```\n" + formatter.format_help().strip("\n") + "\n```\n"


def _section(text: str, command: str) -> tuple[int, int, int, int]:
    """Where the usage block and the option table of ``## command`` start and end in docs/cli.md."""
    head = re.search(rf"^## {command}\n", text, re.M)
    assert head, f"docs/cli.md has no '## {command}' section"
    u0 = text.index("```\n", head.end())
    u1 = text.index("```\n", u0 + 4) + 4
    start = text.index("| option | help |", u1)
    end = text.index("\n\n", start) + 1
    return u0, u1, start, end


@pytest.mark.parametrize("command", COMMANDS)
def test_the_cli_reference_lists_every_option_as_the_parser_has_it(command):
    text = CLI_MD.read_text()
    u0, u1, start, end = _section(text, command)
    assert text[u0:u1] == usage(command), f"docs/cli.md's usage of `changemap {command}` is stale"
    assert text[start:end] == option_table(command), (
        f"docs/cli.md's table for `changemap {command}` differs from the parser's options; regenerate it with "
        "python -m tests.test_docs")


def regenerate() -> None:
    """Rewrite every option table of docs/cli.md from the parsers."""
    text = CLI_MD.read_text()
    for command in COMMANDS:
        u0, u1, start, end = _section(text, command)
        text = text[:u0] + usage(command) + text[u1:start] + option_table(command) + text[end:]
    CLI_MD.write_text(text)


if __name__ == "__main__":
    regenerate()
    sys.exit(0)
