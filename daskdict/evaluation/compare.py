"""Methods, layers or models side by side: a table of measures over seeds, and its bar chart.

A *result* is one record per run: the keys that name the run (``method``, ``layer``, ``model``,
``n_atoms``...), usually a ``seed``, and the measures (``purity``, ``agreement``, ...).
:func:`compare` groups the records by the naming keys and gives each measure's mean and spread
(standard deviation, ``ddof=1``) over the group's records; :func:`plot_compare` draws one measure
of such a table as bars with their spread, one group of bars per layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from daskdict.errors import InvalidInputError

__all__ = ["compare", "plot_compare"]

MEAN, STD = "_mean", "_std"
NON_MEASURES = ("seed", "random_state")


def _records(results: Any) -> list[dict]:
    """The results as a list of dicts (a pandas DataFrame gives its rows)."""
    if hasattr(results, "to_dict") and hasattr(results, "columns"):
        results = results.to_dict("records")
    if isinstance(results, Mapping) or not isinstance(results, Iterable):
        raise InvalidInputError(
            f"Expected results as a sequence of dicts (one per run). Got {type(results).__name__}."
        )
    records = list(results)
    for number, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InvalidInputError(
                f"Result {number} is a {type(record).__name__}, not a dict of names and measures."
            )
    if not records:
        raise InvalidInputError("Expected at least one result to compare. Got none.")
    return [dict(r) for r in records]


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _measures(records: list[dict], by: tuple[str, ...], measures: Sequence[str] | None
              ) -> list[str]:
    """The measures asked for, or every numeric key that names no run (in first-seen order)."""
    if measures is None:
        names: dict[str, None] = {}
        for record in records:
            for key, value in record.items():
                if key not in by and key not in NON_MEASURES and _is_number(value):
                    names[key] = None
        if not names:
            raise InvalidInputError(f"The results have no numeric measure besides {list(by)}.")
        return list(names)
    if isinstance(measures, str):
        measures = [measures]
    measures = list(measures)
    for name in measures:
        if not any(name in r for r in records):
            raise InvalidInputError(f"No result has the measure {name!r}.")
        if name in by:
            raise InvalidInputError(f"{name!r} is both a grouping key and a measure.")
    return measures


def _values(group: list[dict], name: str, key: tuple) -> np.ndarray:
    """A measure's finite values within one group (missing and NaN values left out)."""
    values = []
    for record in group:
        value = record.get(name)
        if value is None:
            continue
        if not _is_number(value):
            raise InvalidInputError(
                f"Measure {name!r} of the run {key} is {value!r}, not a number."
            )
        if math.isfinite(value):
            values.append(float(value))
    return np.asarray(values, dtype=np.float64)


def compare(results: Iterable[Mapping[str, Any]] | Any, by: str | Sequence[str] = ("method",),
            measures: str | Sequence[str] | None = None, *, as_frame: bool | None = None):
    """Put methods, layers or models side by side: each measure's mean and spread over seeds.

    Parameters
    ----------
    results : sequence of dict, or pandas DataFrame
        One record per run: the keys in ``by``, the measures, and usually ``seed``.
    by : str or sequence of str, default=("method",)
        The keys that name a row of the table, e.g. ``("method", "layer", "n_atoms")``; the
        records with equal values are one row (in the order of first appearance).
    measures : str or sequence of str, optional
        The measures to summarise; default: every numeric key besides ``by`` and ``seed``.
    as_frame : bool, optional
        Return a pandas DataFrame (``True``) or a list of dicts (``False``); default: a
        DataFrame when pandas can be imported.

    Returns
    -------
    pandas.DataFrame or list of dict
        One row per group of shape (n_groups, len(by) + 1 + 2 * n_measures): the ``by``
        columns, ``n_runs``, and ``<measure>_mean`` and ``<measure>_std`` (NaN when fewer than
        two finite values; NaN and missing values are left out).

    Raises
    ------
    InvalidInputError
        No results, a record that is not a dict, a ``by`` key missing from a record, an unknown
        measure, or a measure that is not a number.
    """
    records = _records(results)
    by = (by,) if isinstance(by, str) else tuple(by)
    if not by:
        raise InvalidInputError("Expected at least one key in `by` to name the rows.")
    for number, record in enumerate(records):
        missing = [k for k in by if k not in record]
        if missing:
            raise InvalidInputError(f"Result {number} has no {missing} (by={list(by)}).")
    names = _measures(records, by, measures)
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record[k] for k in by), []).append(record)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["n_runs"] = len(group)
        for name in names:
            values = _values(group, name, key)
            row[name + MEAN] = float(values.mean()) if values.size else float("nan")
            row[name + STD] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        rows.append(row)
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise
        return rows
    return pd.DataFrame(rows)


def _name_columns(rows: list[dict]) -> list[str]:
    """The columns of a :func:`compare` table that name its rows."""
    return [c for c in rows[0] if c != "n_runs" and not c.endswith((MEAN, STD))]


def plot_compare(table: Any, measure: str, *, group: str = "layer", ax: Any = None,
                 title: str | None = None):
    """Bars of one measure with their spread, one group of bars per ``group`` value.

    Parameters
    ----------
    table : pandas.DataFrame or list of dict
        A table from :func:`compare`.
    measure : str
        The measure to draw (its ``<measure>_mean`` and ``<measure>_std`` columns).
    group : str, default="layer"
        The naming column whose values are the groups on the x axis; the other naming columns
        (method, number of atoms...) label the bars within a group. Without such a column, all
        bars are one group.
    ax : matplotlib Axes, optional
        Where to draw; default: a new figure.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidInputError
        An empty table, or a measure the table does not have.
    """
    import matplotlib.pyplot as plt

    rows = _records(table)
    if measure + MEAN not in rows[0]:
        raise InvalidInputError(f"The table has no measure {measure!r} (no {measure + MEAN!r}).")
    names = _name_columns(rows)
    labels = [c for c in names if c != group]
    groups = list(dict.fromkeys(r.get(group, "") for r in rows))
    bars = list(dict.fromkeys(" ".join(str(r[c]) for c in labels) or measure for r in rows))
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) * max(1, len(bars)) / 3), 3.5))
    else:
        fig = ax.figure
    width = 0.8 / len(bars)
    for number, bar in enumerate(bars):
        heights, spreads = np.full(len(groups), np.nan), np.zeros(len(groups))
        for r in rows:
            if (" ".join(str(r[c]) for c in labels) or measure) == bar:
                at = groups.index(r.get(group, ""))
                heights[at] = r[measure + MEAN]
                spread = r.get(measure + STD, float("nan"))
                spreads[at] = spread if spread is not None and math.isfinite(spread) else 0.0
        ax.bar(np.arange(len(groups)) + (number - (len(bars) - 1) / 2) * width, heights, width,
               yerr=spreads, capsize=2, label=bar)
    ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups],
                  rotation=45 if len(groups) > 4 else 0)
    ax.set_ylabel(measure)
    if group in names:
        ax.set_xlabel(group)
    if len(bars) > 1:
        ax.legend(fontsize="small")
    ax.set_title(title if title is not None else measure)
    fig.tight_layout()
    return fig
