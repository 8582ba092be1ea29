"""What every command shares: console logging and the one-line error exit.

A command turns the errors a user can fix (bad path, bad flag, unreadable data, missing optional package) into one
``prog: error: ...`` line on stderr and exit code 2, never a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

# The errors a user can fix, for every command; commands add their own (checkpoint, download, training errors).
USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError, ImportError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The commands' ``--help``: the description as written, and each option's default after its help.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter``, a default that says nothing (None, False: the option's absence)
    is not printed, nor one the help text already explains ("... (default: CUDA when available)").
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def setup_logging() -> None:
    """Console logging for the commands (the package itself never configures logging)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)


def run_command(prog: str, run: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``run(args)`` with console logging: 0 on success, 2 with one ``prog: error: ...`` line for a user error.

    Args:
        prog: the command's name in the message (``rfdetr.export``, ``train_seg_stage2.py`` ...).
        run: the command's body.
        args: its parsed flags.
        errors: exception types beyond :data:`USER_ERRORS` that are the user's to fix.
    """
    setup_logging()
    try:
        run(args)
    except (*USER_ERRORS, *errors) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
