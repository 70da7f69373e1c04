"""The ``medattn`` command line: one subcommand per capability, mirroring the widgets.

Each subcommand is a module of this package with a ``register(subparsers)`` function that
creates its parser and sets ``func`` (``args -> exit code``) with ``set_defaults``; adding
one is a new module and its name in :data:`COMMANDS`. Library errors
(:class:`~napari_medattn.errors.MedAttnError`) are printed as one sentence on stderr with a
non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from napari_medattn import __version__
from napari_medattn.errors import MedAttnError

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("info", "models", "segment", "detect", "classify", "explain", "evaluate", "train",
            "finetune", "pacs", "fuse", "cohort", "register")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medattn",
        description="Attention-based medical image analysis (CT, MR, PET) from the command "
                    "line; the same library the napari plugin uses.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medattn`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except MedAttnError as error:
        print(f"medattn: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`medattn models | head`): stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")
        return 0
