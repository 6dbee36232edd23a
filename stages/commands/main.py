"""``steep <command> ...``: one entry point, one help text, for the commands a user runs beside the stages.

Each command is a module of this package with ``add_parser(subparsers)`` (its flags and help) and
``run(args) -> int`` (its exit code). A :class:`stages.core.io.StageError` becomes one line on stderr and exit
code 1, as in the stages. Installed as the ``steep`` console script (pyproject.toml), also ``python -m
stages.commands.main``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from stages.core.io import StageError

# the command modules, in the order `steep --help` lists them
COMMANDS = ("audit", "cache", "review")


def parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per module of COMMANDS."""
    p = argparse.ArgumentParser(
        prog="steep",
        description="Commands beside the pipeline's stages (run the stages themselves with `dvc repro`).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"stages.commands.{name}")
        module.add_parser(sub).set_defaults(_run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command, return its exit code."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args._run(args))
    except StageError as e:
        print(f"steep {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
