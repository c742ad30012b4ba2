"""The one owner of daskdict's on-disk formats: headers, kinds, the writer rule, load/describe.

Every object daskdict saves carries a header: a JSON object under the key ``"daskdict"``, in the
attributes of a Zarr group or at the top of a JSON file::

    {"format": 1, "kind": "dictionary", "version": "0.4.0", ...}

``kind`` names what the object is (:data:`KINDS`); ``format`` is :data:`FORMAT_VERSION`, raised
whenever a reader of the old layout could misread the new one. Reading a header never changes
the disk (no recovery, no clean-up: that is the writers' business, see :mod:`daskdict.io.atomic`).

Writers follow one rule (:func:`check_output`): an output may never be one of the call's inputs
nor a daskdict object of another kind; ``overwrite=True`` replaces only an output of the same
kind; and the check runs before any work starts.

An embedding store's layers are Zarr arrays of one of :data:`LAYER_DTYPES` (their own metadata
says which; readers take either as it is, without a copy). A store written by
:func:`daskdict.embed` also records it in its header, as ``embed.store_dtype``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from daskdict._version import __version__
from daskdict.errors import InvalidInputError, OutputNotWritableError, StoreNotFoundError

FORMAT_VERSION = 1
HEADER_KEY = "daskdict"
KINDS = ("embedding store", "dictionary", "codes", "explanations", "concept graph",
         "concept graph pair", "plan", "checkpoint", "estimator", "alignment",
         "component scores")
# the dtypes an embedding store's layers are written in: float16 halves the disk and the reads
# of a large store (to 3 significant digits, within +-65504)
LAYER_DTYPES = ("float32", "float16")
# files that are not Zarr but that a user may well pass where a store is expected
_HINTS = {
    ".npy": "a NumPy file: load it with numpy.load and pass the array, or write a store with "
            "daskdict.create_store(path, {'final': numpy.load(file)})",
    ".npz": "a NumPy archive: load it with numpy.load and write a store with "
            "daskdict.create_store",
    ".html": "an HTML report (open it in a browser)",
    ".json": "a JSON file",
    ".csv": "a CSV table",
    ".png": "an image",
}
# the same files recognised by their first bytes, whatever their name
_MAGIC = (
    (b"\x93NUMPY", ".npy"),
    (b"PK\x03\x04", ".npz"),
    (b"\x89PNG", ".png"),
)

_LOADERS: dict[str, Callable[[Path], Any]] = {}
_DESCRIBERS: dict[str, Callable[[Path], dict]] = {}


def header(kind: str, **fields: Any) -> dict:
    """The header of a new object of ``kind``: format, kind, version, then ``fields``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown daskdict kind {kind!r}; known kinds: {KINDS}.")
    return {"format": FORMAT_VERSION, "kind": kind, "version": __version__, **fields}


def check_layer_dtype(value: Any, name: str = "store_dtype") -> str:
    """The name of a layer dtype (one of :data:`LAYER_DTYPES`), else a named error.

    A NumPy dtype or type (``numpy.float16``) is taken as its name.

    Raises
    ------
    InvalidInputError
    """
    found = value
    if not isinstance(value, str):
        try:
            found = np.dtype(value).name
        except (TypeError, ValueError):
            found = None
    if found not in LAYER_DTYPES:
        raise InvalidInputError(
            f"Expected {name} to be one of {list(LAYER_DTYPES)}. Got {value!r}.")
    return found


def write_header(group: zarr.Group, kind: str, **fields: Any) -> dict:
    """Write :func:`header` into ``group``'s attributes and return it."""
    meta = header(kind, **fields)
    group.attrs[HEADER_KEY] = meta
    return meta


def update_header(group: zarr.Group, **fields: Any) -> dict:
    """Change fields of an existing header (kind and format stay)."""
    meta = dict(group.attrs.get(HEADER_KEY, {}))
    meta.update(fields)
    group.attrs[HEADER_KEY] = meta
    return meta


def _not_found(path: Path) -> StoreNotFoundError:
    return StoreNotFoundError(f"Nothing at {str(path)!r}: the path does not exist.")


def _json_header(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    meta = payload.get(HEADER_KEY) if isinstance(payload, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def _what_file(path: Path) -> str | None:
    """What the file at ``path`` is, in words, when it is something a user may mistake for a
    store (None when it is not recognised)."""
    meta = _json_header(path)
    if meta is not None:
        return f"daskdict {meta.get('kind')} (a JSON file)"
    try:
        with open(path, "rb") as file:
            start = file.read(512)
    except OSError:
        return _HINTS.get(path.suffix.lower())
    suffix = next((s for magic, s in _MAGIC if start.startswith(magic)), None)
    text = start.lstrip().lower()
    if suffix is None and (text.startswith(b"<!doctype html") or text.startswith(b"<html")):
        suffix = ".html"
    if suffix is None and text[:1] in (b"{", b"["):
        suffix = ".json"
    return _HINTS.get(suffix or path.suffix.lower())


def open_node(path: str | os.PathLike) -> zarr.Group | zarr.Array:
    """Open a Zarr node read-only, or raise an error that says what ``path`` is instead.

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``path``, or a folder that holds no Zarr node.
    InvalidInputError
        If ``path`` is a file (saying what kind of file, and how to convert a NumPy one).
    """
    path = Path(path)
    if not path.exists():
        raise _not_found(path)
    if path.is_file():
        what = _what_file(path)
        raise InvalidInputError(
            f"{str(path)!r} is a file, not a Zarr store" + (f": it is {what}." if what else ".")
        )
    if not any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")):
        raise StoreNotFoundError(
            f"{str(path)!r} is a folder but not a Zarr store (it holds no zarr.json)."
        )
    try:
        return zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for a damaged node
        raise InvalidInputError(
            f"{str(path)!r} is not a readable Zarr store ({type(exc).__name__}: {exc})."
        ) from exc


def read_header(path: str | os.PathLike) -> dict:
    """The daskdict header of a Zarr group or JSON file (``{}`` for a Zarr node without one).

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``path``.
    InvalidInputError
        If ``path`` is neither a Zarr node nor a JSON file with a daskdict header.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        meta = _json_header(path)
        if meta is None:
            raise InvalidInputError(f"{str(path)!r} is a JSON file without a daskdict header.")
        return meta
    node = open_node(path)
    return dict(node.attrs.get(HEADER_KEY, {}))


def kind_of(path: str | os.PathLike) -> str | None:
    """The kind of the daskdict object at ``path``; None when nothing daskdict is there.

    A Zarr group without a header but with ``layers/`` is an embedding store written by an
    older version (the store header used to carry no kind).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = read_header(path)
    except (InvalidInputError, StoreNotFoundError):
        return None
    kind = meta.get("kind")
    if kind is None and path.is_dir() and (path / "layers").is_dir():
        return "embedding store"
    return kind


def check_format(meta: dict, path: Path | str) -> None:
    """Refuse a header written by a newer, incompatible daskdict."""
    version = meta.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidInputError(
            f"{str(path)!r} was written in format {version!r}, newer than this daskdict's "
            f"({FORMAT_VERSION}); upgrade daskdict to read it."
        )


def open_kind(path: str | os.PathLike, kind: str) -> tuple[zarr.Group, dict]:
    """Open the Zarr group of a daskdict object, checking that it is of ``kind``.

    Returns
    -------
    group : zarr.Group
        Opened read-only.
    meta : dict
        Its header.
    """
    path = Path(path)
    node = open_node(path)
    found = kind_of(path)
    if not isinstance(node, zarr.Group) or found != kind:
        got = ("a bare Zarr array" if isinstance(node, zarr.Array)
               else "a Zarr group without a daskdict header" if found is None
               else f"daskdict {found}")
        raise InvalidInputError(f"Expected {str(path)!r} to hold daskdict {kind}. Got {got}.")
    meta = dict(node.attrs.get(HEADER_KEY, {}))
    check_format(meta, path)
    return node, meta


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _contains(outer: Path, inner: Path) -> bool:
    try:
        return inner.resolve().is_relative_to(outer.resolve())
    except OSError:
        return False


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, naming the path, if an output could not be written there."""
    path = Path(path)
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {str(probe)!r} is a file, not a folder."
        )
    if not os.access(probe, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {str(probe)!r} is not writable."
        )
    # permission bits do not tell everything (root passes os.access, /proc refuses new files):
    # create and remove a file where the output's folders will be made
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {str(probe)!r} does not accept new files "
            f"({exc.strerror or exc})."
        ) from exc
    return path


def check_apart(path: str | os.PathLike, inputs: Iterable[Any]) -> Path:
    """Check that ``path`` is writable and neither is, holds nor lies inside any input path.

    This is all a folder that a run resumes (a checkpoint, a work folder) needs: it may exist.
    Entries of ``inputs`` that are not paths (arrays, None) are skipped.

    Raises
    ------
    OutputNotWritableError
    """
    path = Path(path)
    for source in inputs:
        if isinstance(source, str | os.PathLike) and str(source):
            source = Path(source)
            if _same_path(source, path) or _contains(path, source) or _contains(source, path):
                raise OutputNotWritableError(
                    f"The output {str(path)!r} is the input {str(source)!r} (or holds it, or "
                    "lies inside it); writing there would destroy the input. Choose another "
                    "output path."
                )
    return check_writable(path)


def check_folder(path: str | os.PathLike, inputs: Iterable[Any], what: str) -> Path:
    """Check a folder that holds a run's outputs (a work folder, a graph checkpoint).

    It may exist (a rerun resumes there), but it may not be a file, a daskdict object itself,
    or an input (nor hold one or lie inside one), and its place must take new files.

    Parameters
    ----------
    path : str or path-like
    inputs : iterable
        The run's inputs; entries that are not paths are skipped.
    what : str
        Names the folder in the message (``"the checkpoint"``, ``"the output folder"``).

    Raises
    ------
    OutputNotWritableError
    """
    path = check_apart(path, inputs)  # being an input is the first thing to say
    found = kind_of(path)
    if found is not None:
        raise OutputNotWritableError(
            f"{what.capitalize()} {str(path)!r} holds daskdict {found}; it must be a folder of "
            "its own. Choose another path.")
    if path.is_file():
        raise OutputNotWritableError(f"{what.capitalize()} {str(path)!r} is a file; it must "
                                     "be a folder.")
    return path


def check_output(path: str | os.PathLike, kind: str, *, inputs: Iterable[Any] = (),
                 overwrite: bool = False, file: bool = False) -> Path:
    """The writer rule: check an output path before any work starts.

    Parameters
    ----------
    path : str or path-like
        Where the output will be written.
    kind : str
        The kind of daskdict object that will be written there (one of :data:`KINDS`).
    inputs : iterable
        The call's inputs; those that are paths may be neither the output, nor inside it, nor
        contain it.
    overwrite : bool, default=False
        Allow replacing an existing output of the same ``kind`` (never of another kind, and
        never anything that is not a daskdict object).
    file : bool, default=False
        The output is a single file (JSON, CSV, HTML) rather than a Zarr folder.

    Returns
    -------
    Path

    Raises
    ------
    OutputNotWritableError
        If the output is an input, exists and may not be replaced, or cannot be written.
    """
    if kind not in KINDS and kind not in ("report", "table"):
        raise ValueError(f"Unknown output kind {kind!r}.")
    path = Path(path)
    check_apart(path, inputs)
    if not path.exists() and not path.is_symlink():
        return path
    found = kind_of(path)
    if file != path.is_file():
        what = "a file" if path.is_file() else "a folder"
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {what} of that name exists"
            + (f" (daskdict {found})." if found else ".")
        )
    if found is None and file and kind in ("report", "table"):
        found = kind
    if found != kind:
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: it already holds "
            + (f"daskdict {found}" if found else "something that is not a daskdict " + kind)
            + f", not {kind}; it is never replaced. Choose another output path."
        )
    if not overwrite:
        raise OutputNotWritableError(
            f"The output {str(path)!r} already exists ({kind}); pass overwrite=True (--force "
            "on the command line) to replace it."
        )
    return path


def register(kind: str, loader: Callable[[Path], Any],
             describer: Callable[[Path], dict] | None = None) -> None:
    """Make :func:`load` and :func:`describe` know how to read objects of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown daskdict kind {kind!r}.")
    _LOADERS[kind] = loader
    if describer is not None:
        _DESCRIBERS[kind] = describer


def load(path: str | os.PathLike) -> Any:
    """Load any saved daskdict object (dictionary, codes, explanations, graph, plan, …).

    Raises
    ------
    StoreNotFoundError
        If nothing is at ``path``.
    InvalidInputError
        If ``path`` holds no daskdict object, or one of a kind that cannot be loaded.
    """
    path = Path(path)
    if not path.exists():
        raise _not_found(path)
    kind = kind_of(path)
    if kind is None:
        read_header(path)  # raises the error that says what the path is
        raise InvalidInputError(f"{str(path)!r} holds no daskdict object (no header).")
    if kind not in _LOADERS:
        raise InvalidInputError(f"{str(path)!r} holds daskdict {kind}, which cannot be loaded "
                                "on its own.")
    return _LOADERS[kind](path)


def describe(path: str | os.PathLike) -> dict:
    """A JSON-ready summary of what ``path`` holds, read without changing anything on disk."""
    path = Path(path)
    node = None if path.is_file() else open_node(path)
    if isinstance(node, zarr.Array):
        return {"kind": "zarr array", "path": str(path), "shape": list(node.shape),
                "dtype": str(node.dtype), "chunks": list(node.chunks)}
    kind = kind_of(path)
    if kind is None:
        meta = read_header(path)  # raises for files that are not daskdict's
        return {"kind": "zarr group", "path": str(path), "attrs": meta}
    if kind in _DESCRIBERS:
        return {"path": str(path), **_DESCRIBERS[kind](path)}
    return {"kind": kind, "path": str(path), "header": read_header(path)}
