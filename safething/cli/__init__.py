"""The ``safething`` command line."""

from safething.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
