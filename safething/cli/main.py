"""The ``safething`` command. Every subcommand has ``--help``.

Errors a user can cause (bad input, missing files, tampered data, a locked
store...) print one clear line on stderr and exit non-zero; a traceback is
shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from safething import __version__
from safething.cli import bench, console, demo, gateway, identity, md, thing, vault
from safething.cli.common import add_identity_option, add_store_option
from safething.errors import SafeThingError, TamperedDataError

__all__ = ["build_parser", "main"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TAMPERED = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safething",
        description="SAFEthing: IoT things on a data network nobody has to trust.",
    )
    parser.add_argument("--version", action="version", version=f"safething {__version__}")
    _add_global_options(parser, top=True)
    add_store_option(parser, top=True)
    add_identity_option(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    identity.register(sub)
    md.register(sub)
    vault.register(sub)
    bench.register(sub)
    demo.register(sub)
    thing.register(sub)
    gateway.register(sub)
    console.register(sub)
    for command in _commands(parser):
        _add_global_options(command, top=False)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--debug`` and ``-v/--verbose``, before or after the subcommand (``safething --debug
    demo`` and ``safething demo --debug`` alike). A subcommand's copy has no default, so
    it does not undo the option given before it; one with its own ``--verbose`` keeps it."""
    default: object = False if top else argparse.SUPPRESS
    taken = parser._option_string_actions
    if "--verbose" not in taken:
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="log more"
        )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks on errors"
    )


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every subcommand's parser, nested ones included (``thing list``)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_commands(child))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "is_async", False):
            result: int = asyncio.run(args.func(args))
        else:
            result = args.func(args)
        return result
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TamperedDataError as e:
        if args.debug:
            raise
        print(f"safething: refused tampered data: {e}", file=sys.stderr)
        return EXIT_TAMPERED
    except (SafeThingError, ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"safething: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: still no traceback unless asked
        if args.debug:
            raise
        print(
            f"safething: internal error ({type(e).__name__}: {e}); "
            "run again with --debug and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
