"""The ``daskdict`` command line: one verb per pipeline stage."""

from daskdict.cli.app import main
from daskdict.cli.parser import build_parser

__all__ = ["build_parser", "main"]
