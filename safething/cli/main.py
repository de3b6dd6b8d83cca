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
from safething.cli import bench, demo, gateway, identity, md, thing, vault
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
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    identity.register(sub)
    md.register(sub)
    vault.register(sub)
    bench.register(sub)
    demo.register(sub)
    thing.register(sub)
    gateway.register(sub)
    return parser


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
