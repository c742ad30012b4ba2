"""A real, human-annotated caption corpus: Debian's package index.

Each package has a one-line synopsis (a caption written by its maintainer), a section (``games``,
``python``, ``libs``, …) and, for about half of them, debtags: ``facet::value`` labels
(``game::strategy``, ``implemented-in::python``) given by people independently of the synopsis, a
two-level hierarchy. Used like captioned images: embed the synopses, learn concepts on them, and
judge the concepts against the independent view (section, debtags).

A sample of a few thousand tagged packages ships with daskdict (:func:`load_debian_packages` with
no path); the whole index of any Debian or Ubuntu machine is read by
:func:`debian_packages_from_apt` (``apt-cache dumpavail``), or from a JSON-lines file with the
fields ``package``, ``source``, ``section``, ``description`` and ``tags``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from daskdict.errors import InvalidInputError, StoreNotFoundError
from daskdict.validation import check_fraction

SAMPLE_NAME = "debian-packages-sample.jsonl.gz"
FIELDS = ("package", "source", "section", "description", "tags")


@dataclass(frozen=True)
class PackageCorpus:
    """Debian packages as parallel columns (one entry per package).

    Attributes
    ----------
    package, source, section, description : ndarray of str, shape (n_packages,)
        Package name (unique), source package, section and one-line synopsis.
    tags : tuple of tuple of str, length n_packages
        Debtags (``facet::value``) of each package, empty for untagged packages.
    """

    package: np.ndarray
    source: np.ndarray
    section: np.ndarray
    description: np.ndarray
    tags: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.package)

    def __repr__(self) -> str:
        n_tagged = sum(1 for t in self.tags if t)
        return f"PackageCorpus(n_packages={len(self)}, n_tagged={n_tagged})"

    def subset(self, rows: Sequence[int] | np.ndarray) -> PackageCorpus:
        """The packages at ``rows`` (integer positions or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return PackageCorpus(self.package[rows], self.source[rows], self.section[rows],
                             self.description[rows], tuple(self.tags[i] for i in rows))

    def tagged(self, *, distinct: bool = True) -> PackageCorpus:
        """Packages with debtags; with ``distinct``, only the first of each repeated synopsis."""
        keep = np.array([bool(t) for t in self.tags], dtype=bool)
        if distinct:
            _, first = np.unique(self.description, return_index=True)
            is_first = np.zeros(len(self), dtype=bool)
            is_first[first] = True
            keep &= is_first
        return self.subset(np.flatnonzero(keep))

    def split_by_source(self, test_size: float = 0.2, random_state: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Train and held-out row positions, whole source packages on one side.

        Binary packages of one source share synopsis patterns, so splitting by row would leak
        near-duplicates into the held-out rows.

        Returns
        -------
        train, test : ndarray of int
            Sorted row positions; ``test`` holds about ``test_size`` of the rows.
        """
        test_size = check_fraction("test_size", test_size, high_open=True)
        sources = np.unique(self.source)
        rng = np.random.default_rng(random_state)
        held_out = set(rng.permutation(sources)[: round(test_size * len(sources))].tolist())
        is_test = np.array([s in held_out for s in self.source.tolist()], dtype=bool)
        return np.flatnonzero(~is_test), np.flatnonzero(is_test)

    def records(self) -> list[dict]:
        """The packages as JSON-ready dicts with the fields of :data:`FIELDS`."""
        return [{"package": p, "source": s, "section": c, "description": d, "tags": list(t)}
                for p, s, c, d, t in zip(self.package.tolist(), self.source.tolist(),
                                         self.section.tolist(), self.description.tolist(),
                                         self.tags, strict=True)]

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write the packages as JSON lines (gzip-compressed when ``path`` ends in ``.gz``)."""
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        tmp = path.with_name(f".{path.name}.tmp")
        with opener(tmp, "wt", encoding="utf-8") as handle:
            for record in self.records():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path


def corpus_from_records(records: Iterable[dict]) -> PackageCorpus:
    """A :class:`PackageCorpus` from dicts with the fields of :data:`FIELDS`.

    ``source`` defaults to the package name and ``tags`` to none; a record without a package name
    or a synopsis is an error.
    """
    columns: dict[str, list] = {field: [] for field in FIELDS}
    for number, record in enumerate(records):
        if not record.get("package") or "description" not in record:
            raise InvalidInputError(
                f"Record {number} has no 'package' or no 'description': {record!r:.200}."
            )
        columns["package"].append(str(record["package"]))
        columns["source"].append(str(record.get("source") or record["package"]))
        columns["section"].append(str(record.get("section") or ""))
        columns["description"].append(str(record["description"]))
        columns["tags"].append(tuple(str(t) for t in record.get("tags") or ()))
    if not columns["package"]:
        raise InvalidInputError("Expected at least one package record. Got none.")
    return PackageCorpus(*(np.asarray(columns[f], dtype=str) for f in FIELDS[:4]),
                         tuple(columns["tags"]))


def load_debian_packages(path: str | os.PathLike | None = None) -> PackageCorpus:
    """Read Debian packages from a JSON-lines file (``.gz`` or plain).

    Parameters
    ----------
    path : str or path-like, optional
        A file with one JSON object per line (fields of :data:`FIELDS`). By default the sample
        that ships with daskdict: a few thousand tagged packages with distinct synopses, drawn by
        source package from Debian 12's index.
    """
    if path is None:
        with resources.as_file(resources.files("daskdict.datasets") / "data" / SAMPLE_NAME) as p:
            return load_debian_packages(p)
    path = Path(path)
    if not path.is_file():
        raise StoreNotFoundError(f"No package index at {str(path)!r}.")
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise InvalidInputError(
                        f"{str(path)!r} line {number} is not JSON: {exc}."
                    ) from exc
    return corpus_from_records(records)


def parse_dumpavail(text: str) -> list[dict]:
    """Records from the stanzas of ``apt-cache dumpavail`` (Package, Source, Section,
    Description's first line, Tag); the first stanza of each package wins."""
    records: dict[str, dict] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t"):
                if key == "Tag":
                    fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        name = fields.get("Package")
        if not name or name in records or "Description" not in fields:
            continue
        tags = [t.strip() for t in fields.get("Tag", "").split(",") if t.strip()]
        records[name] = {"package": name,
                         "source": fields.get("Source", name).split(" ")[0] or name,
                         "section": fields.get("Section", "").split("/")[-1],
                         "description": fields["Description"], "tags": tags}
    return list(records.values())


def debian_packages_from_apt() -> PackageCorpus:
    """The package index of this Debian or Ubuntu machine, from ``apt-cache dumpavail``.

    Run ``apt-get update`` first so that the index is complete.
    """
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        raise InvalidInputError("apt-cache was not found: this is not a Debian or Ubuntu "
                                "machine; pass the path of a package index instead.")
    result = subprocess.run([apt_cache, "dumpavail"], capture_output=True, text=True,
                            check=True)
    return corpus_from_records(parse_dumpavail(result.stdout))
