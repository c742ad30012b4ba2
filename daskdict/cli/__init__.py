"""The ``daskdict`` command line: one verb per pipeline stage."""

from daskdict.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
