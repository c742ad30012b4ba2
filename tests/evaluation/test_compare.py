"""compare and plot_compare: methods, layers or models side by side over seeds."""

import math

import numpy as np
import pytest

from daskdict.errors import InvalidInputError
from daskdict.evaluation import compare, plot_compare


def _results():
    out = []
    for method, base in (("ksvd", 0.6), ("kmeans", 0.4)):
        for layer in ("hidden_03", "final"):
            for seed in (0, 1, 2):
                out.append({"method": method, "layer": layer, "seed": seed,
                            "purity": base + 0.01 * seed + (0.1 if layer == "final" else 0.0),
                            "seconds": 1.0 + seed, "note": "text is not a measure"})
    return out


def test_mean_and_spread_over_seeds_per_method_and_layer():
    rows = compare(_results(), by=("method", "layer"), as_frame=False)
    assert [(r["method"], r["layer"]) for r in rows] == [
        ("ksvd", "hidden_03"), ("ksvd", "final"), ("kmeans", "hidden_03"), ("kmeans", "final")]
    first = rows[0]
    assert first["n_runs"] == 3
    assert first["purity_mean"] == pytest.approx(0.61)
    assert first["purity_std"] == pytest.approx(np.std([0.6, 0.61, 0.62], ddof=1))
    assert rows[3]["purity_mean"] == pytest.approx(0.51)
    # seed names a run, and text is no measure
    assert "seed_mean" not in first and "note_mean" not in first
    assert first["seconds_mean"] == pytest.approx(2.0)


def test_chosen_measures_only_and_one_value_has_no_spread():
    rows = compare([{"method": "a", "purity": 0.5, "agreement": 0.2}], by="method",
                   measures="purity", as_frame=False)
    assert set(rows[0]) == {"method", "n_runs", "purity_mean", "purity_std"}
    assert math.isnan(rows[0]["purity_std"])


def test_nan_and_missing_values_are_left_out():
    rows = compare([{"m": "a", "x": 1.0}, {"m": "a", "x": float("nan")}, {"m": "a"},
                    {"m": "a", "x": 3.0}], by="m", measures=["x"], as_frame=False)
    assert rows[0]["x_mean"] == pytest.approx(2.0)
    assert rows[0]["n_runs"] == 4


def test_dataframe_in_and_out():
    pd = pytest.importorskip("pandas")
    frame = compare(pd.DataFrame(_results()), by=["method"], measures=["purity"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["method", "n_runs", "purity_mean", "purity_std"]
    assert frame.loc[frame.method == "kmeans", "n_runs"].item() == 6


@pytest.mark.parametrize("results, kwargs, message", [
    ([], {}, "at least one result"),
    ({"method": "a"}, {}, "sequence of dicts"),
    ([1, 2], {}, "not a dict"),
    ([{"method": "a", "purity": 1.0}, {"purity": 0.5}], {}, "has no \\['method'\\]"),
    ([{"method": "a", "purity": 1.0}], {"measures": ["agreement"]}, "No result has"),
    ([{"method": "a", "purity": "high"}], {"measures": ["purity"]}, "not a number"),
    ([{"method": "a", "note": "x"}], {}, "no numeric measure"),
    ([{"method": "a", "purity": 1.0}], {"by": ()}, "at least one key"),
])
def test_bad_input_is_a_clear_error(results, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        compare(results, **kwargs)


def test_plot_has_one_group_per_layer_and_bars_with_spread():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    table = compare(_results(), by=("method", "layer"), measures=["purity"], as_frame=False)
    fig = plot_compare(table, "purity")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["hidden_03", "final"]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.41, 0.51, 0.61, 0.71]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ksvd", "kmeans"]
    bars = [c for c in ax.containers if hasattr(c, "patches")]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)
    matplotlib.pyplot.close(fig)


def test_plot_unknown_measure_is_a_clear_error():
    table = compare(_results(), by=("method", "layer"), measures=["purity"], as_frame=False)
    with pytest.raises(InvalidInputError, match="no measure 'agreement'"):
        plot_compare(table, "agreement")
