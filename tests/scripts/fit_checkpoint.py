"""Subprocess entry point for the reliability tests: one checkpointed fit, killable at any time.

    python fit_checkpoint.py STORE --checkpoint CK --atoms-out ATOMS.npy --report REPORT.json
        [--atoms 32] [--nonzero 3] [--iters 8] [--seed 0] [--client threads] [--throttle 0.0]
        [--cli --out DICT.zarr]

``--throttle S`` sleeps S seconds at the end of every iteration (before its checkpoint is
written), only to widen the window in which the test can kill the process; it does not change
any result. The report records how many iterations this process computed, so a test can check
that a resumed run did not redo finished ones. ``--cli`` runs the same fit through
``daskdict.cli.app`` (``daskdict fit ... --in-process``) and exits with its code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--atoms-out", default=None)
    p.add_argument("--report", default=None)
    p.add_argument("--atoms", type=int, default=32)
    p.add_argument("--nonzero", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--client", default="threads")
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--cli", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import daskdict
    import daskdict.learn.training as learn

    computed = []
    real_iterate = learn._iterate

    def counting_iterate(*a, **k):
        out = real_iterate(*a, **k)
        computed.append(time.time())
        if args.throttle:
            time.sleep(args.throttle)
        return out

    learn._iterate = counting_iterate

    if args.cli:
        from daskdict.cli.app import main as cli_main

        cli_args = ["fit", args.store, "--atoms", str(args.atoms), "--nonzero", str(args.nonzero),
                    "--iters", str(args.iters), "--seed", str(args.seed), "--out", args.out,
                    "--in-process", "--quiet"]
        if args.checkpoint:
            cli_args += ["--checkpoint", args.checkpoint]
        return cli_main(cli_args)

    model = daskdict.fit(args.store, n_atoms=args.atoms, n_nonzero=args.nonzero,
                         n_iter=args.iters, random_state=args.seed, client=args.client,
                         checkpoint=args.checkpoint, verbose=False)
    if args.atoms_out:
        np.save(args.atoms_out, model.atoms)
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"computed_iterations": len(computed), "history": model.history,
                       "seed": model.params["random_state"]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
