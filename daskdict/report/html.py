"""Pictures of concepts and a static HTML report that works offline.

- :func:`plot_atom_grid`: the top activating images of an atom with its themes, as in
  "Disentangling Concepts and Constructing Human-Compatible Explanations for Image
  Embeddings" (Valentin et al.).
- :func:`plot_training_curve`: relative error, FVU and dead atoms per iteration (model.history).
- :func:`daskdict.evaluation.plot_autointerp`: that paper's score histogram.
- :func:`write_report`: one HTML file listing every concept (sortable by frequency and score)
  with base64-embedded thumbnails of its own representative items, themes, top captions and an
  inline-SVG histogram of its activations. A concept is labelled as the explanations name it:
  ``"17+"`` and ``"17-"`` for the two sides of a signed atom, ``"17"`` for a whole atom. With a
  dictionary of levels, each level is a section of its own, the coarsest first. A
  Content-Security-Policy allows only inline data: nothing is fetched. It is
  written under the writer rule (:func:`daskdict.io.formats.check_output`): never over an
  input, and over an earlier daskdict report only with ``overwrite=True``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from daskdict._version import __version__
from daskdict.embedding.items import to_rgb
from daskdict.errors import InvalidInputError, OutputNotWritableError
from daskdict.evaluation.metrics import plot_autointerp
from daskdict.io import formats
from daskdict.io.atomic import write_text
from daskdict.validation import check_positive_int

# marks a report as daskdict's: only such a file is ever replaced (with overwrite=True)
_GENERATOR = f'<meta name="generator" content="daskdict {__version__}">'


def _image_at(images, row: int):
    return images(row) if callable(images) else images[row]


def plot_atom_grid(explanations, atom: int | str, images: Sequence | Callable, *,
                   n_images: int = 12, n_columns: int = 4):
    """The representative images of one concept and its themes (the concept paper's grids).

    Parameters
    ----------
    explanations : Explanations
    atom : int or str
        A concept label (``"17+"``, ``"17-"``, ``"17"``) or an atom (its own row: see
        :meth:`Explanations.__getitem__`); the grid shows that concept's own items.
    images : sequence indexed by item row, or callable ``row -> image``
        PIL images, paths or uint8 arrays of shape (height, width, 3).
    n_images, n_columns : int

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    row = explanations[atom]
    shown = row["top_rows"][:n_images]
    n_rows = max(1, int(np.ceil((len(shown) + 1) / n_columns)))
    fig, axes = plt.subplots(n_rows, n_columns, figsize=(2.2 * n_columns, 2.2 * n_rows))
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    title = f"concept {row.get('concept', atom)}"
    axes[0].text(0.0, 1.0, title + "\n" + "\n".join(f"• {t}" for t in row["themes"]),
                 va="top", ha="left", fontsize=10, transform=axes[0].transAxes, wrap=True)
    for ax, item in zip(axes[1:], shown, strict=False):
        ax.imshow(np.asarray(to_rgb(_image_at(images, item))))
    fig.tight_layout()
    return fig


def plot_training_curve(model_or_history):
    """Relative error, FVU and dead atoms per K-SVD iteration (a Dictionary's history)."""
    import matplotlib.pyplot as plt

    history = getattr(model_or_history, "history", model_or_history)
    if not history:
        raise InvalidInputError("No training history to plot (the dictionary has none).")
    iterations = np.arange(1, len(history) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for key in ("relative_error", "fvu"):
        if key in history[0]:
            left.plot(iterations, [h[key] for h in history], marker="o", label=key)
    left.set_xlabel("iteration")
    left.legend(frameon=False)
    right.plot(iterations, [h.get("dead_atoms", 0) for h in history], marker="o",
               color="tab:red")
    right.set_xlabel("iteration")
    right.set_ylabel("dead atoms")
    fig.tight_layout()
    return fig


def activation_histogram_svg(values: np.ndarray, *, bins: int = 16, width: int = 120,
                             height: int = 36) -> str:
    """A small inline SVG histogram of a concept's |coefficients|."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        return f'<svg width="{width}" height="{height}" role="img"></svg>'
    counts, edges = np.histogram(values, bins=bins)
    peak = max(1, counts.max())
    bar = width / bins
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" height="{h:.1f}"/>'
        for i, h in enumerate(counts / peak * (height - 2)))
    title = f"|coefficient| {edges[0]:.3g} to {edges[-1]:.3g}, {values.size} items"
    return (f'<svg class="hist" width="{width}" height="{height}" role="img">'
            f"<title>{html.escape(title)}</title>{rects}</svg>")


def thumbnail_uri(image, size: int = 64) -> str:
    """A PNG data: URI of an image (see :func:`daskdict.embedding.items.to_rgb`) scaled to fit."""
    picture = to_rgb(image)  # a new image: thumbnail() below does not touch the caller's
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_uri(fig) -> str:
    """A matplotlib figure as a PNG data: URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_SCRIPT = """
document.querySelectorAll('th[data-key]').forEach(function (header) {
  header.addEventListener('click', function () {
    var table = header.closest('table');
    var body = table.tBodies[0];
    var key = header.dataset.key;
    var descending = header.dataset.order !== 'desc';
    table.querySelectorAll('th[data-key]').forEach(function (h) { h.dataset.order = ''; });
    header.dataset.order = descending ? 'desc' : 'asc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
      if (isNaN(x)) { x = -Infinity; }
      if (isNaN(y)) { y = -Infinity; }
      return descending ? y - x : x - y;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    document.body.dataset.sorted = key + ':' + header.dataset.order;
  });
});
document.body.dataset.ready = 'true';
""".strip()

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px; text-align: left; vertical-align: top; }
th[data-key] { cursor: pointer; text-decoration: underline dotted; }
th[data-order="desc"]::after { content: " \\25BC"; }
th[data-order="asc"]::after { content: " \\25B2"; }
.themes li:first-child { font-weight: bold; }
.thumbs img { width: 48px; height: 48px; margin: 1px; image-rendering: pixelated; }
.hist rect { fill: #4c72b0; }
.muted { color: #888; }
details summary { cursor: pointer; }
ul { margin: 0; padding-left: 1.2em; }
img.figure { max-width: 48%; }
""".strip()


def write_report(path: str | os.PathLike, explanations, *, codes=None,
                 images: Sequence | Callable | None = None, model=None, scores=None,
                 graph=None, graph_layer: int | None = None,
                 title: str = "daskdict concepts", n_thumbnails: int = 8,
                 n_captions: int = 5, overwrite: bool = False) -> Path:
    """Write a static, offline HTML report of every concept.

    Each row of the explanations is a concept, labelled by its ``concept`` (``"17+"``,
    ``"17-"``, ``"17"``) with its own representative items. When the explanations were made
    from a dictionary of levels (their meta holds ``level_sizes``), each level is a section
    of its own, coarsest first, and each concept names its level.

    Parameters
    ----------
    path : path
        The ``.html`` file to write; never one of the inputs (the codes or store the
        explanations were made from, a thumbnail's image file).
    explanations : Explanations
    codes : Codes, optional
        For each concept's activation histogram (of its side's coefficients).
    images : sequence indexed by item row, or callable ``row -> image``, optional
        For thumbnails of the top items (PIL images, paths or uint8 arrays).
    model : Dictionary, optional
        Adds the training curve.
    scores : AutoInterpScores, optional
        Adds the auto-interpretability summary and histogram.
    graph : ConceptGraph, optional
        A fitted concept graph (as in "Dictionary Learning for Disentangling Concepts in
        Vision Transformers") in which the explained atoms are the concepts of layer
        ``graph_layer``: each atom gains its parents in the layer before (with the final
        model's weight and its held-out AUC) and its children in the layer after, and the
        report gains the graph's figures (parents per concept, ROC curves).
    graph_layer : int, optional
        The graph layer of the explained atoms (required with ``graph``).
    n_thumbnails, n_captions : int
        Per atom.
    overwrite : bool, default=False
        Replace a report that daskdict wrote at ``path`` (never any other file).

    Returns
    -------
    Path

    Raises
    ------
    OutputNotWritableError
        If ``path`` is an input, exists and is not a daskdict report, or exists and
        ``overwrite`` is False.
    """
    n_thumbnails = check_positive_int("n_thumbnails", n_thumbnails, minimum=0)
    n_captions = check_positive_int("n_captions", n_captions, minimum=0)
    path = _check_report_output(path, explanations, images, n_thumbnails, overwrite)
    links = _graph_links(graph, graph_layer) if graph is not None else None
    activations = _activations_by_concept(codes) if codes is not None else None
    levelled = bool(getattr(explanations, "meta", {}).get("level_sizes"))
    sections: dict[int | None, list[str]] = {}
    for row in sorted(explanations, key=lambda r: r.get("level", 0)) if levelled else (
            explanations):
        sections.setdefault(int(row.get("level", 0)) if levelled else None, []).append(
            _atom_html(row, activations, links, images, n_thumbnails, n_captions, levelled))
    figures, summary = _figures(graph, graph_layer, model, scores)
    document = _document(title, explanations, summary, figures, sections, links is not None)
    write_text(path, document)
    return path


def _check_report_output(path, explanations, images, n_thumbnails: int,
                         overwrite: bool) -> Path:
    """The writer rule for a report; the inputs are the explanations' sources and images."""
    meta = getattr(explanations, "meta", {})
    inputs = [*getattr(explanations, "sources", []), meta.get("source")]
    if images is not None and not callable(images):
        shown = {r for row in explanations for r in row["top_rows"][:n_thumbnails]}
        inputs += [images[r] for r in sorted(shown) if 0 <= r < len(images)
                   and isinstance(images[r], str | os.PathLike)]
    return check_report_output(path, inputs, overwrite)


def check_report_output(path, inputs: Sequence, overwrite: bool) -> Path:
    """The writer rule for an HTML report: never over an input, and over an existing file
    only if daskdict wrote it as a report and ``overwrite`` is True."""
    inputs = [i for i in inputs if i]
    # first the inputs, the kind and the rights; then whose file it is; then overwrite
    path = formats.check_output(path, "report", inputs=inputs, overwrite=True, file=True)
    if path.is_file() and not _is_daskdict_report(path):
        raise OutputNotWritableError(
            f"Cannot write the report {str(path)!r}: it holds a file that is not a daskdict "
            "report; it is never replaced. Choose another output path.")
    return formats.check_output(path, "report", inputs=inputs, overwrite=overwrite, file=True)


def _is_daskdict_report(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            return '<meta name="generator" content="daskdict' in handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def _atom_html(row: dict, activations: dict | None, links: dict | None, images,
               n_thumbnails: int, n_captions: int, levelled: bool = False) -> str:
    """One table row of the report: a concept's numbers, themes, thumbnails and captions."""
    atom = row["atom"]
    label = str(row.get("concept", atom))
    group = isinstance(atom, list)
    level = int(row.get("level", 0))
    themes = "".join(f"<li>{html.escape(t)}</li>" for t in row["themes"])
    themes = f'<ul class="themes">{themes}</ul>' if themes else (
        f'<span class="muted">{html.escape(row["status"])}</span>')
    captions = "".join(f"<li>{html.escape(c)}</li>" for c in row["top_captions"][:n_captions])
    captions = (f"<details><summary>{len(row['top_captions'])} top captions</summary>"
                f"<ul>{captions}</ul></details>") if captions else ""
    thumbs = ""
    if images is not None:
        thumbs = "".join(
            f'<img alt="item {html.escape(str(item))}" '
            f'src="{thumbnail_uri(_image_at(images, r))}">'
            for r, item in zip(row["top_rows"][:n_thumbnails], row["top_items"], strict=False))
    histogram = (activation_histogram_svg(activations.get((atom, row.get("sign", "±")),
                                                          np.zeros(0)))
                 if activations is not None and not group else "")
    score = row["score"] if row["score"] == row["score"] else float("nan")
    score_text = "" if np.isnan(score) else f"{score:.3g}"
    graph_cell = ""
    if links is not None:
        graph_cell = f"<td>{'' if group else links.get(atom, '')}</td>"
    atom_text = "&".join(map(str, atom)) if group else str(atom)
    level_text = f'<div class="muted level">level {level}</div>' if levelled else ""
    return (f'<tr class="atom" data-atom="{html.escape(atom_text)}" '
            f'data-concept="{html.escape(label)}" data-level="{level}" data-frequency='
            f'"{row["frequency"]:.9g}" data-score="{score if not np.isnan(score) else "NaN"}">'
            f"<td>{html.escape(label)}{level_text}</td><td>{row['n_active']} "
            f'<span class="muted">({100 * row["frequency"]:.2f}%)</span></td>'
            f"<td>{score_text}</td><td>{themes}<div>{html.escape(row['summary'])}</div></td>"
            f'<td class="thumbs">{thumbs}</td><td>{captions}</td><td>{histogram}</td>'
            f"{graph_cell}</tr>")


def _figures(graph, graph_layer, model, scores) -> tuple[list[tuple[str, str]], str]:
    """The report's figures (name, data: URI) and the auto-interpretability summary."""
    figures = []
    if graph is not None and graph_layer >= 1:  # layer 0 has no parents
        figures.append(("concept graph: parents per concept",
                        figure_uri(_figure_of(graph.plot_parents(graph_layer)))))
        figures.append(("concept graph: ROC curves",
                        figure_uri(_figure_of(graph.plot_roc(graph_layer)))))
    if model is not None and getattr(model, "history", None):
        figures.append(("training curve", figure_uri(plot_training_curve(model))))
    summary = ""
    if scores is not None:
        figures.append(("auto-interpretability", figure_uri(plot_autointerp(scores))))
        summary = "<ul>" + "".join(
            f"<li>{html.escape(kind)}: mean cosine {v['mean_cosine']:.4f}, mean CLIPScore "
            f"{v['mean_clipscore']:.4f}</li>" for kind, v in scores.summary().items()) + "</ul>"
    return figures, summary


def _table_html(table_id: str, rows_html: list[str], with_graph: bool) -> str:
    """One sortable table of concepts."""
    return f"""<table id="{table_id}" class="atoms"><thead><tr><th>concept</th>
<th data-key="frequency">active items</th>
<th data-key="score">score</th><th>themes</th><th>top items</th><th>captions</th>
<th>activations</th>{"<th>concept graph</th>" if with_graph else ""}</tr></thead>
<tbody>
{"".join(rows_html)}
</tbody></table>"""


def _sections_html(sections: dict, with_graph: bool) -> str:
    """One table (``None``: no levels), or a section per level, coarsest first."""
    if list(sections) == [None]:
        return _table_html("atoms", sections[None], with_graph)
    return "\n".join(
        f'<section class="level" id="level-{level}"><h2>Level {level}'
        f'{" (coarsest)" if level == min(sections) else ""}: {len(rows)} concepts</h2>\n'
        f'{_table_html(f"atoms-level-{level}", rows, with_graph)}</section>'
        for level, rows in sorted(sections.items()))


def _document(title: str, explanations, summary: str, figures: list[tuple[str, str]],
              sections: dict, with_graph: bool) -> str:
    """The whole HTML page, with its Content-Security-Policy."""
    figure_html = "".join(f'<img class="figure" alt="{html.escape(name)}" src="{uri}">'
                          for name, uri in figures)
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    policy = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              f"script-src 'sha256-{script_hash}'; form-action 'none'; base-uri 'none'")
    meta = html.escape(json.dumps({k: v for k, v in explanations.meta.items()
                                   if isinstance(v, str | int | float)}))
    method = html.escape(str(explanations.meta.get("method", "?")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{_GENERATOR}
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="referrer" content="no-referrer">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body data-ready="false">
<h1>{html.escape(title)}</h1>
<p>{len(explanations)} concepts, explained by <b>{method}</b>.
Click <i>active items</i> or <i>score</i> to sort. <span class="muted">{meta}</span></p>
{summary}{figure_html}
{_sections_html(sections, with_graph)}
<script>{_SCRIPT}</script>
</body></html>
"""


def _figure_of(plotted):
    """The matplotlib Figure behind what a plotting method returned (an Axes or a Figure)."""
    return plotted.get_figure() if hasattr(plotted, "get_figure") else plotted


def _graph_links(graph, layer: int | None) -> dict[int, str]:
    """Per concept of ``layer``, HTML naming its parents (layer - 1) and children (layer + 1)."""
    n_layers = len(graph.n_concepts_)
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise InvalidInputError(
            f"Expected graph_layer to be the graph layer of the explained atoms, 0 … "
            f"{n_layers - 1}. Got {layer!r}.")
    cells: dict[int, list[str]] = {c: [] for c in range(graph.n_concepts_[layer])}
    if layer >= 1:
        weights = graph.weights_[layer].tocsc()
        in_layer = np.asarray(graph.metrics_["layer"]) == layer
        auc = np.full(graph.n_concepts_[layer], np.nan)
        auc[np.asarray(graph.metrics_["concept"])[in_layer]] = np.asarray(
            graph.metrics_["auc"], dtype=float)[in_layer]
        for concept in cells:
            column = weights[:, concept]
            parents = ", ".join(f"{p} ({w:+.2f})" for p, w in
                                zip(column.indices, column.data, strict=True))
            score = "" if np.isnan(auc[concept]) else f", AUC {auc[concept]:.3f}"
            cells[concept].append(f"<div>parents in layer {layer - 1}: "
                                  f"{parents or '<i>none</i>'}{score}</div>")
    if layer + 1 < n_layers:
        weights = graph.weights_[layer + 1].tocsr()
        for concept in cells:
            row = weights[concept]
            children = ", ".join(map(str, row.indices))
            cells[concept].append(f"<div>children in layer {layer + 1}: "
                                  f"{children or '<i>none</i>'}</div>")
    return {concept: "".join(parts) for concept, parts in cells.items()}


def _activations_by_concept(codes) -> dict:
    """``{(atom, sign): |coefficients|}`` for every atom and sign ``"+"``, ``"-"``, ``"±"``."""
    codes = codes.compute()
    keep = (codes.indices >= 0) & (codes.values != 0)
    atoms = codes.indices[keep]
    values = codes.values[keep]
    order = np.argsort(atoms, kind="stable")
    atoms, values = atoms[order], values[order]
    bounds = np.searchsorted(atoms, np.arange(codes.n_atoms + 1))
    out = {}
    for atom in range(codes.n_atoms):
        own = values[bounds[atom]:bounds[atom + 1]]
        out[(atom, "±")] = np.abs(own)
        out[(atom, "+")] = own[own > 0]
        out[(atom, "-")] = -own[own < 0]
    return out
