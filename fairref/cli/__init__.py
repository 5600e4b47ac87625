"""The ``fairref`` command line (SPEC §8). argparse lives only in this package.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``,
registered in ``_COMMANDS``; the run function imports the library lazily so
``fairref --help`` stays fast.

How a command reports errors (SPEC §7: no raw traceback reaches a user). A run function
never prints and catches its own failures: it lets the library raise, or raises itself,

- ``ValueError`` for bad input (a config value, a file's content, a flag combination), or
- an ``OSError`` such as ``FileNotFoundError`` / ``FileExistsError`` for paths,

with a message that says what was wrong, where (the file, key or ``--flag``) and how to
fix it. :func:`main` wraps every run in one place: such an exception becomes the single
line ``error: <message>`` on stderr and exit status 2; Ctrl-C prints ``interrupted`` and
exits 130; anything else is a bug and keeps its traceback. Flag values are checked by
argparse ``type=`` functions (:func:`positive_int`, ...), whose errors take the same
one-line form. Exit statuses: 0 success, 1 a negative verdict (``golden --verify`` found
disagreeing vectors), 2 an error the user can fix, 130 interrupted. A new command gets all
of this by being added to ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

from fairref.cli.calibrate import _add_calibrate, _run_calibrate
from fairref.cli.common import (EXPECTED_ERRORS, _Parser, non_negative_float,
                                positive_int)
from fairref.cli.evaluate import _add_demo, _add_eval, _run_demo, _run_eval
from fairref.cli.probe import _add_probe, _run_probe
from fairref.cli.tools import _add_golden, _add_generate, _run_generate, _run_golden

__all__ = ["main", "build_parser", "version", "EXPECTED_ERRORS", "positive_int",
           "non_negative_float"]


_COMMANDS = {"demo": (_add_demo, _run_demo), "probe": (_add_probe, _run_probe),
             "calibrate": (_add_calibrate, _run_calibrate), "eval": (_add_eval, _run_eval),
             "generate": (_add_generate, _run_generate), "golden": (_add_golden, _run_golden)}


def version() -> str:
    """The installed distribution's version, else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fairref")
    except PackageNotFoundError:
        from fairref import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fairref",
        description="FAIR-Calib reference implementation: post-training quantization "
        "for diffusion LLMs (LLaDA, Dream).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures become one ``error:`` line and status 2."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; an OSError as "path: reason"."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
