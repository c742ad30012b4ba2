"""The table of per-atom explanations that :func:`daskdict.explain` returns, saved and loaded.

A saved table is a JSON file with a daskdict header (``{"daskdict": {"kind": "explanations",
...}, "rows": [...]}``) or a CSV file (no header: its first row names the columns). Either is
written only through the writer rule of :func:`daskdict.io.formats.check_output`: never over
the codes or store the table was made from, never over a file that daskdict did not write, and
over an earlier table only with ``overwrite=True``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from daskdict.errors import InvalidInputError, OutputNotWritableError, StoreNotFoundError
from daskdict.io import formats
from daskdict.io.atomic import write_text

KIND = "explanations"
COLUMNS = ("atom", "n_active", "frequency", "top_items", "top_rows", "top_captions", "themes",
           "theme_scores", "summary", "score", "status")
# how a row is shown: written after COLUMNS, so a table saved before they existed still loads
CONCEPT_COLUMNS = ("concept", "sign", "level")
SIGNS = ("+", "-", "±")
_LIST_COLUMNS = ("atom", "top_items", "top_rows", "top_captions", "themes", "theme_scores")
# header fields that formats.header writes; the rest of a header is the table's meta
_HEADER_FIELDS = ("format", "kind", "version")
# meta entries naming the paths a table was made from: it is never saved over them
SOURCE_FIELDS = ("codes", "store")
_CSV_HEAD = ",".join(COLUMNS)


class Explanations:
    """Per-concept explanations: a small table with one row per concept.

    A concept is one side of an atom (its items with positive, or with negative,
    coefficients: ``"17+"``, ``"17-"``), a whole atom (``"17"``, items ranked by
    |coefficient|), or a group of atoms.

    Columns
    -------
    atom : int (or list of int for a group of atoms)
    concept : str, the label shown: ``"17+"``, ``"17-"``, ``"17"`` (or ``"3&8"`` for a group)
    sign : str, ``"+"``, ``"-"`` or ``"±"`` (both signs, ranked by |coefficient|)
    level : int, the atom's level in a dictionary with levels (0 = coarsest), else 0
    n_active : int, items whose code uses the atom (on the concept's side)
    frequency : float, ``n_active / n_items``
    top_items : list, ids of the concept's representative items (see :func:`daskdict.explain`)
    top_rows : list of int, their row numbers in the store
    top_captions : list of str, their captions
    themes : list of str, best first
    theme_scores : list of float, the method's score of each theme
    summary : str
    score : float, the first theme's score (NaN without one)
    status : str, ``"ok"``, ``"inactive"``, ``"no captions"`` or ``"error: …"``

    Parameters
    ----------
    rows : list of dict
        One dict per concept with the columns above; a row without ``concept``, ``sign`` or
        ``level`` (a table saved before they existed) is a whole atom: ``"±"``, level 0,
        labelled by its atom.
    meta : dict, optional
        How they were made (method, parameters, n_items, ``signs``, ``representatives``,
        ``level_sizes`` with levels, and the ``codes`` and ``store`` paths when they were
        given as paths).
    """

    def __init__(self, rows: list[dict], meta: dict | None = None):
        self.rows = [_with_concept(row) for row in rows]
        self.meta = {k: v for k, v in dict(meta or {}).items() if k not in _HEADER_FIELDS}
        self._by_concept = {row["concept"]: i for i, row in enumerate(self.rows)}
        # an atom's own row: the whole atom, else its side with more items (ties: "+")
        self._by_atom: dict = {}
        for i, row in enumerate(self.rows):
            key = _atom_key(row["atom"])
            held = self._by_atom.get(key)
            if held is None or (self.rows[held]["sign"] != "±" and (
                    row["sign"] == "±" or row["n_active"] > self.rows[held]["n_active"])):
                self._by_atom[key] = i

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        ok = sum(row["status"] == "ok" for row in self.rows)
        return (f"Explanations(n_concepts={len(self)}, method={self.meta.get('method')!r}, "
                f"explained={ok})")

    def __getitem__(self, key) -> dict:
        """The row of a concept label (``"17+"``, ``"17-"``, ``"17"``), of an atom (an int:
        the whole atom, or with signs split its side with more items) or of a group (a list
        of ints)."""
        if isinstance(key, str):
            if key not in self._by_concept:
                raise KeyError(f"No explanation for concept {key!r}.")
            return self.rows[self._by_concept[key]]
        atom = _atom_key(key)
        if atom not in self._by_atom:
            raise KeyError(f"No explanation for atom {key!r}.")
        return self.rows[self._by_atom[atom]]

    def concept_row(self, atom: int, coefficient: float) -> dict:
        """The row explaining a code's ``coefficient`` on ``atom``: the side of its sign when
        signs are split, else the atom's row (never the other side's).

        Raises
        ------
        KeyError
            If the table has no row of that side nor of the whole atom.
        """
        for label in (concept_label(atom, "+" if coefficient > 0 else "-"), str(int(atom))):
            if label in self._by_concept:
                return self.rows[self._by_concept[label]]
        raise KeyError(f"No explanation for atom {int(atom)} on the side of {coefficient:+g}.")

    @property
    def atoms(self) -> list:
        return [row["atom"] for row in self.rows]

    @property
    def concepts(self) -> list[str]:
        """The concept labels, in row order (``"17+"``, ``"17-"``, ``"17"``)."""
        return [row["concept"] for row in self.rows]

    @property
    def levels(self) -> list[int]:
        """The levels present, coarsest first (``[0]`` for a dictionary without levels)."""
        return sorted({int(row["level"]) for row in self.rows})

    def level(self, level: int) -> Explanations:
        """The rows of one level (0 = coarsest) as a table of their own, with the same meta.

        Raises
        ------
        InvalidInputError
            If ``level`` is not a level of the table.
        """
        if not isinstance(level, int | np.integer) or int(level) not in self.levels:
            raise InvalidInputError(f"Expected level to be one of {self.levels}. Got "
                                    f"{level!r}.")
        return Explanations([row for row in self.rows if row["level"] == int(level)],
                            {**self.meta, "level": int(level)})

    @property
    def sources(self) -> list[str]:
        """The paths this table was made from (codes, store): never an output of it."""
        return [str(self.meta[key]) for key in SOURCE_FIELDS if self.meta.get(key)]

    def first_themes(self) -> dict:
        """``{atom: first theme or ""}``, what the auto-interpretability captions use (an
        atom's own row: see :meth:`__getitem__`)."""
        return {atom: (self.rows[i]["themes"][0] if self.rows[i]["themes"] else "")
                for atom, i in self._by_atom.items()}

    def to_dict(self) -> dict:
        """The JSON document of :meth:`to_json`: the header (with the meta) and the rows."""
        return {formats.HEADER_KEY: formats.header(KIND, **self.meta), "rows": self.rows}

    def to_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the table as JSON (the header and one object per row).

        Raises
        ------
        OutputNotWritableError
            If ``path`` is a source of the table, holds anything but daskdict explanations,
            or holds explanations and ``overwrite`` is False.
        """
        path = formats.check_output(path, KIND, inputs=self.sources, overwrite=overwrite,
                                    file=True)
        write_text(path, json.dumps(self.to_dict(), indent=1, default=_json_default))
        return path

    def to_csv(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the table as CSV; list columns are JSON-encoded cells.

        Columns a method adds to the standard ones (FALCON's ``removed_words``, ``n_high``,
        ``n_low``) follow them, every cell JSON-encoded (empty where a row lacks it). An
        existing file is replaced only with ``overwrite=True`` and only if it is a table
        written by this method.

        Raises
        ------
        OutputNotWritableError
        """
        # first the inputs, the kind and the rights; then whose file it is; then overwrite
        path = formats.check_output(path, "table", inputs=self.sources, overwrite=True,
                                    file=True)
        if path.is_file() and not _is_daskdict_csv(path):
            raise OutputNotWritableError(
                f"Cannot write the output {str(path)!r}: it holds a file that daskdict did not "
                "write; it is never replaced. Choose another output path.")
        path = formats.check_output(path, "table", inputs=self.sources, overwrite=overwrite,
                                    file=True)
        extra = [key for key in dict.fromkeys(k for row in self.rows for k in row)
                 if key not in COLUMNS and key not in CONCEPT_COLUMNS]
        extra = [*CONCEPT_COLUMNS, *extra]
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *extra])
        writer.writeheader()
        for row in self.rows:
            cells = {key: (json.dumps(row.get(key), default=_json_default)
                           if key in _LIST_COLUMNS else row.get(key)) for key in COLUMNS}
            cells.update({key: json.dumps(row[key], default=_json_default)
                          for key in extra if key in row})
            writer.writerow(cells)
        write_text(path, buffer.getvalue())
        return path

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write as CSV (a ``.csv`` path) or JSON (any other), under the writer rule.

        Parameters
        ----------
        path : path
        overwrite : bool, default=False
            Replace a table of explanations that daskdict wrote at ``path``.

        Returns
        -------
        Path

        Raises
        ------
        OutputNotWritableError
            If ``path`` is the codes or store the table was made from, holds anything else
            than daskdict explanations, or exists and ``overwrite`` is False.
        """
        if Path(path).suffix.lower() == ".csv":
            return self.to_csv(path, overwrite=overwrite)
        return self.to_json(path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanations:
        """Read a table written by :meth:`save` (``.json`` or ``.csv``).

        Raises
        ------
        StoreNotFoundError
            If nothing is at ``path``.
        InvalidInputError
            If ``path`` holds no daskdict explanations, or a newer format of them.
        """
        path = Path(path)
        if not path.exists():
            raise StoreNotFoundError(f"No explanations at {str(path)!r}: the path does not "
                                     "exist.")
        if path.is_file() and path.suffix.lower() == ".csv":
            return cls(_read_csv(path), {"source": str(path)})
        if path.is_file() and path.suffix.lower() != ".json":
            raise InvalidInputError(f"Expected {str(path)!r} to be explanations saved as .json "
                                    "or .csv by Explanations.save.")
        meta = formats.read_header(path)
        if meta.get("kind") != KIND:
            raise InvalidInputError(f"Expected {str(path)!r} to hold daskdict explanations. "
                                    f"Got kind={meta.get('kind')!r}.")
        formats.check_format(meta, path)
        rows = json.loads(path.read_text(encoding="utf-8")).get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "atom" in r
                                                 for r in rows):
            raise InvalidInputError(f"{str(path)!r} holds no rows of explanations.")
        return cls(rows, meta)

    def to_dataframe(self):
        """The table as a pandas DataFrame (pandas is imported only here)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Explanations.to_dataframe needs pandas: pip install pandas"
                              ) from exc
        extra = [key for key in dict.fromkeys(k for row in self.rows for k in row)
                 if key not in COLUMNS and key not in CONCEPT_COLUMNS]  # e.g. FALCON's
        return pd.DataFrame(self.rows, columns=[*COLUMNS, *CONCEPT_COLUMNS, *extra])


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ())[:len(COLUMNS)] != COLUMNS:
            raise InvalidInputError(f"{str(path)!r} is not a table of explanations written by "
                                    f"Explanations.save (its columns are not {COLUMNS}).")
        extra = [key for key in reader.fieldnames if key not in COLUMNS]
        rows = []
        for record in reader:
            row = {key: json.loads(record[key]) if key in _LIST_COLUMNS else record[key]
                   for key in COLUMNS}
            row["n_active"] = int(row["n_active"])
            row["frequency"] = float(row["frequency"])
            row["score"] = float(row["score"]) if row["score"] else float("nan")
            row.update({key: json.loads(record[key]) for key in extra if record[key]})
            rows.append(row)
    return rows


def _is_daskdict_csv(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n").startswith(_CSV_HEAD)
    except (OSError, UnicodeDecodeError):
        return False


def concept_label(atom, sign: str = "±") -> str:
    """How a concept is named: ``"17+"``, ``"17-"``, ``"17"``, or ``"3&8"`` for a group."""
    if isinstance(atom, list | tuple | np.ndarray):
        return "&".join(str(int(a)) for a in atom)
    return f"{int(atom)}{'' if sign == '±' else sign}"


def _with_concept(row: dict) -> dict:
    """A copy of ``row`` with its sign, level and label (a whole atom of level 0 by default)."""
    row = dict(row)
    row.setdefault("sign", "±")
    if row["sign"] not in SIGNS:
        raise InvalidInputError(f"Expected a row's sign to be one of {SIGNS}. Got "
                                f"{row['sign']!r}.")
    row.setdefault("level", 0)
    row.setdefault("concept", concept_label(row["atom"], row["sign"]))
    return row


def _atom_key(atom):
    if isinstance(atom, list | tuple | np.ndarray):
        return tuple(int(a) for a in atom)
    return int(atom)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot write {type(value).__name__} as JSON.")


def describe(path: str | os.PathLike) -> dict:
    """A JSON-ready summary of saved explanations (for :func:`daskdict.io.formats.describe`)."""
    table = Explanations.load(path)
    n_atoms = table.meta.get("n_atoms", len({_atom_key(a) for a in table.atoms}))
    return {"kind": KIND, "header": formats.read_header(path), "n_atoms": n_atoms,
            "n_concepts": len(table), "signs": table.meta.get("signs", "abs"),
            "method": table.meta.get("method"),
            "status": dict(Counter(str(row["status"]) for row in table.rows))}


formats.register(KIND, Explanations.load, describe)
