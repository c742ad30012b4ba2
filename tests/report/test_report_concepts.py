"""The report shows concepts as the explanations name them: each side of a signed atom with its
own items, and a dictionary's levels as sections, coarsest first."""

import re

import numpy as np
import pytest

from daskdict.explanations.explain import explain
from daskdict.learn.dictionary import Codes
from daskdict.report.html import plot_atom_grid, write_report

INDICES = np.array([[0, 1], [0, -1], [0, 2], [1, -1], [0, 1], [2, -1]], dtype=np.int32)
VALUES = np.array([[2.0, 0.5], [-3.0, 0.0], [0.5, 1.0], [1.0, 0.0], [-1.0, -4.0], [2.0, 0.0]])
CAPTIONS = ["red kite", "blue boat", "red kite", "green tree", "blue boat", "old tree"]
# one colour per item, so a thumbnail says which item it is
COLOURS = [(255, 0, 0), (0, 0, 255), (250, 5, 5), (0, 255, 0), (5, 5, 250), (9, 99, 9)]


def images(row):
    return np.full((8, 8, 3), COLOURS[row], dtype=np.uint8)


def rows_of(page: str) -> dict[str, str]:
    """Each concept's table row, by its label."""
    return {label: row for row, label in re.findall(
        r'(<tr class="atom"[^>]*data-concept="([^"]+)".*?</tr>)', page, re.S)}


def test_sides_are_labelled_and_show_their_own_items(tmp_path):
    made = Codes(INDICES, VALUES, 3)
    table = explain(made, CAPTIONS, min_count=1)
    page = write_report(tmp_path / "r.html", table, codes=made, images=images).read_text()
    rows = rows_of(page)
    assert sorted(rows) == ["0+", "0-", "1+", "1-", "2+"]
    assert "<section" not in page and 'id="atoms"' in page  # no levels: one table
    for label, row in rows.items():
        assert f"<td>{label}</td>" in row
        # its thumbnails are its own top items, in order
        thumbs = re.findall(r'<img alt="item ([^"]+)"', row)
        assert thumbs == [str(r) for r in table[label]["top_rows"]]
        # its histogram counts its own side's coefficients
        assert re.search(rf", {table[label]['n_active']} items</title>", row), row
    assert 'data-atom="0"' in rows["0-"]
    fig = plot_atom_grid(table, "0-", images)
    assert fig.axes[0].texts[0].get_text().startswith("concept 0-")
    shown = [ax.images[0].get_array()[0, 0].tolist() for ax in fig.axes[1:] if ax.images]
    assert shown == [list(COLOURS[r]) for r in table["0-"]["top_rows"]]


def test_levels_are_sections_coarsest_first(tmp_path):
    made = Codes(INDICES, VALUES, 3, level_sizes=[1, 2])
    table = explain(made, CAPTIONS, min_count=1)
    page = write_report(tmp_path / "r.html", table, codes=made).read_text()
    sections = re.findall(r'<section class="level" id="level-(\d+)"><h2>([^<]*)</h2>', page)
    assert [level for level, _ in sections] == ["0", "1"]
    assert sections[0][1] == "Level 0 (coarsest): 2 concepts"
    assert sections[1][1] == "Level 1: 3 concepts"
    coarse = page[page.index('id="level-0"'):page.index('id="level-1"')]
    fine = page[page.index('id="level-1"'):]
    assert set(rows_of(coarse)) == {"0+", "0-"} and set(rows_of(fine)) == {"1+", "1-", "2+"}
    for label, row in rows_of(page).items():
        level = table[label]["level"]
        assert f'data-level="{level}"' in row and f"level {level}</div>" in row
    assert page.count('class="atom"') == len(table)
    # one level of the table alone has one section
    one = write_report(tmp_path / "one.html", table.level(1)).read_text()
    assert re.findall(r'id="level-(\d+)"', one) == ["1"]


@pytest.mark.parametrize("signs", ["split", "abs"])
def test_report_of_a_whole_atom_table_labels_atoms(tmp_path, signs):
    made = Codes(INDICES, VALUES, 3)
    table = explain(made, CAPTIONS, min_count=1, signs=signs)
    page = write_report(tmp_path / "r.html", table, codes=made).read_text()
    expected = ["0", "1", "2"] if signs == "abs" else ["0+", "0-", "1+", "1-", "2+"]
    assert list(rows_of(page)) == expected
