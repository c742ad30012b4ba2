"""Subprocess entry point for the embed resumption test: ``daskdict embed``, killable any time.

    python embed_killable.py IMAGES STORE MODEL [--throttle 0.05] [--chunk-rows 4]
        [--batch-size 2]

``--throttle S`` sleeps S seconds before decoding each image, only to widen the window in which
the test can kill the process; it does not change any result. The run goes through
``daskdict.cli.app`` (``daskdict embed ... --quiet``) and exits with its code.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("images")
    p.add_argument("store")
    p.add_argument("model")
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--chunk-rows", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args(argv)

    from daskdict.cli.app import main as cli_main
    from daskdict.embedding import run as embed_module

    real_to_rgb = embed_module.to_rgb

    def slow_to_rgb(raw):
        time.sleep(args.throttle)
        return real_to_rgb(raw)

    embed_module.to_rgb = slow_to_rgb
    return cli_main(["embed", args.images, "--out", args.store, "--model", args.model,
                     "--chunk-rows", str(args.chunk_rows), "--batch-size", str(args.batch_size),
                     "--workers", "1", "--quiet"])


if __name__ == "__main__":
    sys.exit(main())
