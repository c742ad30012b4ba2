"""Image sources for :func:`daskdict.embed`: folders, paths, manifests, arrays and datasets.

:func:`resolve_items` turns what a user passes as ``images`` (and ``captions``) into
:class:`ImageItems`: the items in a fixed order, their ids, their captions when known, and a
``fetch(index)`` that returns one raw image (a path, PIL image, array or bytes) and its caption.
:func:`to_rgb` decodes a raw image into an RGB PIL image; it raises on anything it cannot read,
and the embedding loop records the message instead of stopping.

Only Pillow is needed here, and only when an image is decoded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.errors import InvalidInputError, StoreNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
# columns looked up, in this order, in the items of a dataset
IMAGE_COLUMNS = ("image", "img", "jpg", "png")
CAPTION_COLUMNS = ("caption", "captions", "text", "txt")


@dataclass(frozen=True)
class ImageItems:
    """The items to embed, in a deterministic order.

    Attributes
    ----------
    ids : ndarray of shape (n_items,)
        Relative paths (str) for files, positions (int64) for in-memory images and datasets.
    captions : ndarray of shape (n_items,) of str, or None
        Captions known before any image is read (a manifest or the ``captions`` argument).
    captions_per_item : bool
        Whether ``fetch`` returns captions read with each item (a dataset's caption column).
    kind : str
        ``"folder"``, ``"paths"``, ``"manifest"``, ``"in-memory"`` or ``"dataset"``.
    root : str or None
        The folder or manifest the items come from.
    fetch : callable
        ``fetch(index) -> (raw_image, caption_or_None)``; may raise for an unreadable item.
    """

    ids: np.ndarray
    captions: np.ndarray | None
    captions_per_item: bool
    kind: str
    root: str | None
    fetch: Callable[[int], tuple[Any, str | None]]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_captions(self) -> bool:
        return self.captions is not None or self.captions_per_item

    def fingerprint(self) -> dict:
        """What identifies these items when a run resumes (JSON-ready)."""
        digest = hashlib.sha256()
        digest.update(json.dumps([str(i) for i in self.ids.tolist()]).encode())
        if self.captions is not None:
            digest.update(json.dumps(self.captions.tolist()).encode())
        return {"kind": self.kind, "n_items": len(self), "has_captions": self.has_captions,
                "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- decoding


def to_rgb(raw: Any):
    """Decode one raw image into an RGB ``PIL.Image.Image`` (a new object; ``raw`` is kept).

    Accepts a path, a PIL image, a NumPy array (H, W), (H, W, C) or (C, H, W) of uint8, bool
    or floats in [0, 1], raw file bytes, or a ``datasets``-style ``{"bytes", "path"}`` dict.
    Files and bytes are turned upright by their EXIF orientation.

    Raises
    ------
    Exception
        Whatever decoding raises (``OSError`` for a damaged file, ``ValueError`` for an array
        that is not an image, ...).
    """
    from PIL import Image, ImageOps

    if isinstance(raw, Mapping):
        if raw.get("bytes") is not None:
            raw = bytes(raw["bytes"])
        elif raw.get("path") is not None:
            raw = raw["path"]
        else:
            raise ValueError(f"Expected an image dict with 'bytes' or 'path'. Got {sorted(raw)}.")
    if isinstance(raw, (bytes, bytearray)):
        raw = io.BytesIO(raw)
    if isinstance(raw, (str, os.PathLike, io.IOBase)):
        with Image.open(raw) as opened:
            opened.load()  # decode now: a truncated file fails here, inside the caller's try
            image = ImageOps.exif_transpose(opened)
            return _rgb(image)
    if isinstance(raw, Image.Image):
        return _rgb(raw)
    if isinstance(raw, np.ndarray):
        return Image.fromarray(_uint8_hwc(raw))
    raise ValueError(
        f"Expected an image (path, PIL image, NumPy array or bytes). Got {type(raw).__name__}."
    )


def _rgb(image):
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")  # always a copy


def _uint8_hwc(array: np.ndarray) -> np.ndarray:
    """An image array as uint8 (H, W, 3)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"Expected an image array of 2 or 3 dimensions. Got shape {array.shape}.")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first
    if array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) == 0:
        raise ValueError(f"Expected an image of shape (H, W, 1|3|4). Got shape {array.shape}.")
    if array.dtype == np.uint8:
        pass
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("Expected a float image with values in [0, 1] (no NaN or inf).")
        array = np.round(array * 255).astype(np.uint8)
    else:
        raise ValueError(
            f"Expected a uint8 image or floats in [0, 1]. Got dtype {array.dtype}; convert it "
            "first (e.g. scale 16-bit images to uint8)."
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[:, :, :3])


# --------------------------------------------------------------------------- sources


def resolve_items(images: Any, captions: Any = None) -> ImageItems:
    """The items of any supported ``images`` source, with captions attached.

    Parameters
    ----------
    images : path, sequence, PIL image, ndarray or dataset
        A folder (searched recursively for the extensions in ``IMAGE_EXTENSIONS``; hidden
        files and folders are skipped), a CSV/JSONL manifest with a ``path`` column (and
        optionally ``caption``), one image file, a sequence of paths or in-memory images, one
        PIL image, an ndarray of shape (n_images, H, W, C) or one image array, or a
        dataset: any object with ``__len__`` and ``__getitem__`` returning dicts with an image
        column (``image``, ``img``, ``jpg`` or ``png``) and optionally a caption column
        (``caption``, ``captions``, ``text`` or ``txt``), such as a Hugging Face
        ``datasets.Dataset``.
    captions : sequence of str, path, or None
        One caption per item, or a CSV/JSONL manifest with ``path`` and ``caption`` columns
        matched to the images by path (for in-memory images and datasets: taken in order).
        Overrides captions that come with the images.

    Returns
    -------
    ImageItems
    """
    items = _items(images)
    if captions is not None:
        items = _with_captions(items, captions)
    return items


def _items(images: Any) -> ImageItems:
    from_memory = _in_memory_image(images)
    if from_memory is not None:
        return from_memory
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.exists():
            raise StoreNotFoundError(f"No images at {str(path)!r}: the path does not exist.")
        if path.is_dir():
            return _folder(path)
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return _manifest(path)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return _paths([path], kind="paths", root=None)
        raise InvalidInputError(
            "Expected a folder of images, an image file or a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}). Got the file {str(path)!r}."
        )
    if isinstance(images, Mapping):
        raise InvalidInputError(
            "Expected images as a folder, a list, an array or a dataset. Got a mapping; pass "
            "its values, or a dataset whose items are dicts."
        )
    if isinstance(images, (list, tuple)):
        if not images:
            raise InvalidInputError("No images: the list is empty.")
        if all(isinstance(item, (str, os.PathLike)) for item in images):
            return _paths([Path(p) for p in images], kind="paths", root=None,
                          ids=[str(p) for p in images])
        sequence = list(images)  # a shallow copy: the caller's list may change later
        return ImageItems(ids=np.arange(len(sequence), dtype=np.int64), captions=None,
                          captions_per_item=False, kind="in-memory", root=None,
                          fetch=lambda i: (sequence[i], None))
    if hasattr(images, "__len__") and hasattr(images, "__getitem__"):
        return _dataset(images)
    raise InvalidInputError(
        "Expected images as a folder, a manifest, a list of paths or images, an array or a "
        f"dataset. Got {type(images).__name__}."
    )


def _in_memory_image(images: Any) -> ImageItems | None:
    """One PIL image, one image array, or an (n, H, W, C) array; None for anything else."""
    single = None
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if images.shape[0] == 0:
                raise InvalidInputError("No images: the array has 0 rows.")
            stack = images
            return ImageItems(ids=np.arange(len(stack), dtype=np.int64), captions=None,
                              captions_per_item=False, kind="in-memory", root=None,
                              fetch=lambda i: (stack[i], None))
        if images.ndim not in (2, 3):
            raise InvalidInputError(
                "Expected an image array (H, W[, C]) or a stack of images (n, H, W, C). Got "
                f"shape {images.shape}."
            )
        single = images
    elif type(images).__module__.startswith("PIL.") and hasattr(images, "convert"):
        single = images
    if single is None:
        return None
    return ImageItems(ids=np.zeros(1, dtype=np.int64), captions=None, captions_per_item=False,
                      kind="in-memory", root=None, fetch=lambda i: (single, None))


def _folder(root: Path) -> ImageItems:
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if (path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
                and not any(part.startswith(".") for part in relative.parts)):
            files.append(relative.as_posix())
    if not files:
        raise InvalidInputError(
            f"No images found in {str(root)!r} (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)})."
        )
    files.sort()
    return _paths([root / f for f in files], kind="folder", root=str(root.resolve()), ids=files)


def _paths(paths: list[Path], kind: str, root: str | None, ids: Sequence[str] | None = None,
           captions: np.ndarray | None = None) -> ImageItems:
    frozen = list(paths)
    return ImageItems(ids=np.asarray(ids if ids is not None else [str(p) for p in frozen],
                                     dtype=str),
                      captions=captions, captions_per_item=False, kind=kind, root=root,
                      fetch=lambda i: (frozen[i], None))


def read_manifest(path: Path, required: Sequence[str]) -> list[dict]:
    """Rows of a CSV (with a header) or JSONL manifest, as dicts; check required columns."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = [dict(row) for row in csv.DictReader(f)]
        else:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"Cannot read the manifest {str(path)!r}: {exc}") from exc
    if not rows:
        raise InvalidInputError(f"The manifest {str(path)!r} has no rows.")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise InvalidInputError(
                f"Expected every line of {str(path)!r} to be a JSON object. Line {number} is "
                f"a {type(row).__name__}.")
        missing = [c for c in required if row.get(c) in (None, "")]
        if missing:
            raise InvalidInputError(
                f"Row {number} of the manifest {str(path)!r} has no {', '.join(missing)}. "
                f"Expected columns {list(required)}; got {sorted(row)}."
            )
    return rows


def _manifest(path: Path) -> ImageItems:
    rows = read_manifest(path, required=("path",))
    ids = [str(row["path"]) for row in rows]
    has_captions = any("caption" in row for row in rows)
    captions = (np.asarray([_caption_text(row.get("caption")) for row in rows], dtype=str)
                if has_captions else None)
    return _paths([_resolve(path.parent, p) for p in ids], kind="manifest",
                  root=str(path.resolve()), ids=ids, captions=captions)


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _caption_text(value: Any) -> str:
    """A caption as text: lists (several captions per image) give their first caption."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else ""
    return str(value)


def _dataset(dataset: Any) -> ImageItems:
    n_items = len(dataset)
    if n_items == 0:
        raise InvalidInputError("No images: the dataset is empty.")
    columns = getattr(dataset, "column_names", None)
    if columns is None:
        first = dataset[0]
        if not isinstance(first, Mapping):
            raise InvalidInputError(
                "Expected a dataset whose items are dicts with an image column. Its first item "
                f"is a {type(first).__name__}; pass a list of images instead."
            )
        columns = list(first)
    image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_column is None:
        raise InvalidInputError(
            f"Expected the dataset to have an image column ({', '.join(IMAGE_COLUMNS)}). Got "
            f"columns {list(columns)}."
        )
    caption_column = next((c for c in CAPTION_COLUMNS if c in columns), None)

    def fetch(index: int) -> tuple[Any, str | None]:
        item = dataset[index]
        caption = _caption_text(item.get(caption_column)) if caption_column else None
        return item[image_column], caption

    return ImageItems(ids=np.arange(n_items, dtype=np.int64), captions=None,
                      captions_per_item=caption_column is not None, kind="dataset", root=None,
                      fetch=fetch)


def _with_captions(items: ImageItems, captions: Any) -> ImageItems:
    if isinstance(captions, (str, os.PathLike)):
        path = Path(captions)
        if not path.is_file():
            raise StoreNotFoundError(
                f"No caption manifest at {str(path)!r}: the file does not exist.")
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise InvalidInputError(
                f"Expected captions as a list or a manifest ({', '.join(MANIFEST_SUFFIXES)}). "
                f"Got the file {str(path)!r}; to give one caption, pass a list [text]."
            )
        values = _manifest_captions(items, path)
    elif isinstance(captions, np.ndarray | list | tuple):
        values = [_caption_text(c) for c in captions]
        if len(values) != len(items):
            raise InvalidInputError(
                f"Expected {len(items)} captions (one per image). Got {len(values)}."
            )
    else:
        raise InvalidInputError(
            "Expected captions as a sequence of str or a CSV/JSONL manifest path. Got "
            f"{type(captions).__name__}."
        )
    fetch = items.fetch
    if items.captions_per_item:
        def fetch(index: int, _inner=items.fetch) -> tuple[Any, str | None]:
            return _inner(index)[0], None
    return ImageItems(ids=items.ids, captions=np.asarray(values, dtype=str),
                      captions_per_item=False, kind=items.kind, root=items.root, fetch=fetch)


def _manifest_captions(items: ImageItems, path: Path) -> list[str]:
    rows = read_manifest(path, required=("path",))
    if not any("caption" in row for row in rows):
        raise InvalidInputError(
            f"The caption manifest {str(path)!r} has no 'caption' column. Got columns "
            f"{sorted(rows[0])}."
        )
    if items.kind not in ("folder", "paths", "manifest"):
        # in-memory images and datasets have no paths: take the captions in order
        if len(rows) != len(items):
            raise InvalidInputError(
                f"Expected {len(items)} captions (one per image) in {str(path)!r}. Got "
                f"{len(rows)} rows.")
        return [_caption_text(row.get("caption")) for row in rows]
    # match by file: manifest paths relative to the manifest's folder or to the image folder
    by_file: dict[str, str] = {}
    bases = [path.parent] + ([Path(items.root)] if items.kind == "folder" else [])
    for row in rows:
        for base in bases:
            key = os.path.normpath(os.path.abspath(_resolve(base, str(row["path"]))))
            by_file.setdefault(key, _caption_text(row.get("caption")))
    values, missing = [], 0
    for index in range(len(items)):
        file = os.path.normpath(os.path.abspath(items.fetch(index)[0]))
        values.append(by_file.get(file, ""))
        missing += file not in by_file
    if missing == len(items):
        raise InvalidInputError(
            f"None of the {len(items)} images has a caption in {str(path)!r}: its 'path' "
            "column is matched relative to the manifest's folder or the image folder."
        )
    if missing:
        warnings.warn(f"{missing} of {len(items)} images have no caption in {str(path)!r}; "
                      "their caption is empty.", UserWarning, stacklevel=4)
    return values
