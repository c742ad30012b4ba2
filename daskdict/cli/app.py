"""``daskdict <verb>``: the entry point; every daskdict error becomes one line and exit code 2."""

from __future__ import annotations

import sys

from daskdict.cli.parser import build_parser
from daskdict.errors import DaskdictError


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    """Run ``daskdict`` with ``argv`` (default: the command line); return the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name.

    Returns
    -------
    int
        0 on success; 2 for a daskdict error (printed as ``daskdict: error: <message>`` on
        stderr, argparse's convention for bad usage); 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DaskdictError as exc:
        print(f"daskdict: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"daskdict {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
