"""Atomic writes of Zarr folders: a crash leaves the old folder or the new one, never a mix.

A writer builds its output in a hidden ``.<name>.tmp-*`` sibling and swaps it into place
(:func:`atomic_group`). Only writers repair what a crashed swap left behind
(:func:`recover_replaced`); readers find the surviving folder without touching the disk
(:func:`readable_path`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import zarr

from daskdict.errors import OutputNotWritableError
from daskdict.io.formats import check_writable

# temporary folders older than this process are left over from writers that died
_start_time = time.time() - 1.0


def atomic_replace(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``; a crash leaves the old or the new one.

    Directories cannot be swapped in one rename, so the old one is first renamed to a hidden
    ``.<name>.old-*`` sibling; :func:`recover_replaced` puts it back if a crash came between
    the two renames.
    """
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def _complete_leftovers(path: Path) -> list[Path]:
    """The ``.<name>.old-*`` siblings of ``path`` that hold a whole Zarr group, by name."""
    if not path.parent.is_dir():
        return []
    return [p for p in sorted(path.parent.glob(f".{path.name}.old-*"))
            if (p / "zarr.json").exists()]


def readable_path(path: str | os.PathLike) -> Path:
    """Where to read the folder ``path`` from, without changing anything on disk.

    That is ``path`` itself, or, when a swap crashed between its two renames (``path`` is
    missing), the old folder the swap had renamed away. Readers call this; writers call
    :func:`recover_replaced`, which also puts that folder back.
    """
    path = Path(path)
    if path.exists():
        return path
    complete = _complete_leftovers(path)
    return complete[-1] if complete else path


def recover_replaced(path: str | os.PathLike) -> Path:
    """Undo a swap that crashed between its two renames; remove stale temporary folders.

    For writers only: it renames and deletes folders beside ``path``.
    """
    path = Path(path)
    if path.parent.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
        if not path.exists():
            complete = _complete_leftovers(path)
            if complete:
                os.replace(complete[-1], path)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            # a temporary folder is only ever renamed into place, never read: left over
            # means its writer died
            if stale.stat().st_mtime < _start_time:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in leftovers:
            if stale.exists():
                shutil.rmtree(stale, ignore_errors=True)
    return path


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden path next to ``path`` (same filesystem, so renames are atomic).

    Raises
    ------
    OutputNotWritableError
        If ``path``'s folder cannot be written, or a file (not a folder) is at ``path``.
    """
    check_writable(path)
    if path.exists() and not path.is_dir():
        # a folder is swapped in: it would silently replace the file
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: a file of that name exists."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_group(path: str | os.PathLike) -> Iterator[zarr.Group]:
    """A new Zarr group, written beside ``path`` and swapped into place when the block ends.

    A crash or an error inside the block leaves whatever was at ``path`` before; the swap
    itself leaves the old group or the new one (:func:`atomic_replace`).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield zarr.open_group(tmp, mode="w")
        atomic_replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it into place (a crash leaves the old file).

    Raises
    ------
    OutputNotWritableError
        If the file cannot be written there.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputNotWritableError(f"Cannot write the output {str(path)!r}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
