"""Write docs/cli.md, the command-line reference, from the ``medattn`` argparse parser.

Run from the repository root::

    .venv/bin/python scripts/make_cli_reference.py          # rewrite docs/cli.md
    .venv/bin/python scripts/make_cli_reference.py --check  # exit 1 if docs/cli.md is stale

Every command's section is exactly what ``medattn COMMAND --help`` prints, at a fixed width
of 100 columns, so the page cannot drift from the parser (``tests/test_docs.py`` fails when
it does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from napari_medattn import __version__
from napari_medattn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"
#: Width of the help text, in columns (argparse wraps at the terminal width otherwise).
WIDTH = 100
REGENERATE = ".venv/bin/python scripts/make_cli_reference.py"
#: Recorded in the page: argparse words and wraps help differently from one Python version
#: to the next, so the page is compared with the parser only under the version it was made with.
PYTHON_MARK = "Made with Python "


def python_version() -> str:
    """``major.minor`` of the running Python."""
    return "{}.{}".format(*sys.version_info[:2])


def recorded_python(text: str) -> str | None:
    """The Python version a generated page says it was made with, if it says one."""
    start = text.find(PYTHON_MARK)
    return text[start + len(PYTHON_MARK):].split()[0] if start >= 0 else None


@contextlib.contextmanager
def help_width(columns: int) -> Iterator[None]:
    """Make argparse wrap help at ``columns``: its formatters read the terminal width through
    ``shutil.get_terminal_size``, which takes ``COLUMNS`` first (argparse keeps 2 free)."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns + 2)
    try:
        yield
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of each subcommand, nested ones after their parent.

    argparse has no public way to walk subparsers; ``_SubParsersAction`` and its
    ``_choices_actions`` (the name and help ``--help`` lists) have been stable since
    Python 2.7.
    """
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                found.append((subparser.prog, helps.get(name, ""), subparser))
                found.extend(subcommands(subparser))
    return found


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading such as ``medattn info``."""
    return "#" + heading.lower().replace(" ", "-")


def table_cell(text: str) -> str:
    """``text`` for a Markdown table cell (a bare ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def cli_reference() -> str:
    """The text of docs/cli.md for the current parser."""
    with help_width(WIDTH):
        parser = build_parser()
        commands = subcommands(parser)
        lines = [
            "# Command-line reference",
            "",
            "<!-- Generated from napari_medattn.cli.build_parser() by "
            "scripts/make_cli_reference.py; do not edit by hand. "
            f"{PYTHON_MARK}{python_version()} -->",
            "",
            f"`medattn` version {__version__}: every command with the options",
            "`medattn COMMAND --help` prints. Installing the package (see the",
            "[user guide](index.md)) puts `medattn` on the path; `python -m napari_medattn.cli`",
            "is the same. Bad input gives one sentence on stderr and a non-zero exit status;",
            "inputs are never overwritten.",
            "",
            "| command | what it does |",
            "| --- | --- |",
            *(f"| [`{prog}`]({anchor(prog)}) | {table_cell(summary)} |"
              for prog, summary, _ in commands),
            "",
            f"## {parser.prog}",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for prog, _, subparser in commands:
            lines += ["", f"## {prog}", "", "```text", subparser.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--check", action="store_true",
                           help=f"exit 1 if {REFERENCE.relative_to(ROOT)} differs from the parser")
    check = arguments.parse_args(argv).check
    text = cli_reference()
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else None
    if check:
        if current != text:
            print(f"{REFERENCE.relative_to(ROOT)} is stale: run `{REGENERATE}`.", file=sys.stderr)
            return 1
        return 0
    if current != text:
        from napari_medattn.io.atomic import atomic_path

        with atomic_path(REFERENCE) as temporary:
            temporary.write_text(text, encoding="utf-8")
    print(f"{REFERENCE.relative_to(ROOT)}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
