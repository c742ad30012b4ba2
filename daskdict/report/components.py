"""An offline HTML report of which model components carry which feature.

:func:`write_components_report` shows, from :func:`daskdict.component_scores`: the scores of
every component for every feature as a picture, each feature's top components, the items that
each of the feature's values retrieves through those components (thumbnails of the images, or
the captions), and heat maps over chosen images (from
:func:`daskdict.decomposition.token_heatmap`), as the applications of Balasubramanian, Basu and
Feizi (2024), "Decomposing and Interpreting Image Representations via Text in ViTs Beyond
CLIP", show them. Like :func:`daskdict.report.write_report` it embeds every picture and
fetches nothing, and it is written under the writer rule.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daskdict._version import __version__
from daskdict.decomposition import (
    ComponentScores,
    feature_vectors,
    plot_heatmap,
    retrieve_by_text,
)
from daskdict.errors import InvalidInputError
from daskdict.io.atomic import write_text
from daskdict.io.store import EmbeddingStore
from daskdict.report.html import check_report_output, figure_uri, thumbnail_uri
from daskdict.validation import check_positive_int

__all__ = ["write_components_report"]

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px; text-align: left; vertical-align: top; }
.thumbs img { width: 64px; height: 64px; margin: 1px; }
.muted { color: #888; }
img.figure { max-width: 90%; }
img.heatmap { width: 220px; margin: 4px; }
""".strip()


def _check_inputs(scores: Any, store: Any, images: Any, heatmaps: Any) -> None:
    if not isinstance(scores, ComponentScores):
        raise InvalidInputError("Expected scores from daskdict.component_scores (a "
                                f"ComponentScores). Got {type(scores).__name__}.")
    if store is not None and not isinstance(store, EmbeddingStore):
        raise InvalidInputError("Expected store to be an opened EmbeddingStore (for the items' "
                                f"captions). Got {type(store).__name__}.")
    if images is not None and not (callable(images) or isinstance(images, Sequence)):
        raise InvalidInputError("Expected images to be a sequence indexed by row or a "
                                "callable row -> image.")
    for entry in heatmaps or ():
        if not (isinstance(entry, Sequence) and len(entry) == 4):
            raise InvalidInputError("Expected each heat map as (title, image, token scores, "
                                    "(rows, cols)).")


def _scores_figure(scores: ComponentScores) -> str:
    """The scores (components x features) as a picture."""
    import matplotlib.pyplot as plt

    n_components, n_features = scores.scores.shape
    fig, ax = plt.subplots(figsize=(2 + 0.9 * n_features, 1.5 + 0.18 * n_components))
    shown = ax.imshow(scores.scores, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(n_features), scores.features, rotation=30, ha="right")
    ax.set_yticks(range(n_components), scores.components, fontsize=7)
    fig.colorbar(shown, ax=ax, label="score")
    fig.tight_layout()
    return figure_uri(fig)


def _items_html(rows: np.ndarray, images: Any, captions: Any) -> str:
    """The retrieved items: thumbnails when there are images, else their captions."""
    if images is not None:
        pictures = (images(int(r)) if callable(images) else images[int(r)] for r in rows)
        return '<span class="thumbs">' + "".join(
            f'<img alt="item {int(r)}" src="{thumbnail_uri(p)}">'
            for r, p in zip(rows, pictures, strict=True)) + "</span>"
    if captions is not None:
        return "<ul>" + "".join(f"<li>{html.escape(str(captions[int(r)]))}</li>"
                                for r in rows) + "</ul>"
    return html.escape(", ".join(str(int(r)) for r in rows))


def _feature_rows(scores: ComponentScores, aligned: Any, queries: dict, images: Any,
                  captions: Any, k_components: int, n_items: int) -> list[str]:
    """One table row per feature: its top components, and what each value retrieves."""
    out = []
    for feature in scores.features:
        column = scores.scores[:, scores.features.index(feature)]
        top = scores.top_components(feature, k_components)
        named = "<br>".join(f"{html.escape(n)} <span class='muted'>"
                            f"{column[scores.components.index(n)]:+.3f}</span>" for n in top)
        retrieved = ""
        for text, vector in queries.get(feature, []):
            rows = retrieve_by_text(aligned, scores, feature, vector, k_components, n_items)
            retrieved += (f"<p><b>{html.escape(text)}</b></p>"
                          + _items_html(rows, images, captions))
        out.append(f"<tr><td>{html.escape(feature)}</td><td>{named}</td>"
                   f"<td>{retrieved or '<span class=muted>-</span>'}</td></tr>")
    return out


def _heatmaps_html(heatmaps: Sequence) -> str:
    import matplotlib.pyplot as plt

    parts = []
    for title, image, token_scores, grid in heatmaps:
        fig, ax = plt.subplots(figsize=(3, 3))
        picture = None if image is None else np.asarray(image)
        plot_heatmap(token_scores, grid, picture, ax=ax)
        ax.set_title(str(title), fontsize=9)
        parts.append(f'<img class="heatmap" alt="{html.escape(str(title))}" '
                     f'src="{figure_uri(fig)}">')
    return "".join(parts)


def _queries(feature_texts: Any, text_encoder: Any, scores: ComponentScores,
             n_values: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Per feature, up to ``n_values`` of its texts with their vectors."""
    if feature_texts is None:
        return {}
    if text_encoder is None:
        raise InvalidInputError("feature_texts needs text_encoder= (a CLIP name or a callable "
                                "texts -> vectors in the aligned space).")
    unknown = sorted(set(feature_texts) - set(scores.features))
    if unknown:
        raise InvalidInputError(f"Features {unknown} have no scores; the scores know "
                                f"{list(scores.features)}.")
    texts = {name: list(values)[:n_values] for name, values in feature_texts.items()}
    vectors = feature_vectors(texts, text_encoder)
    return {name: list(zip(texts[name], vectors[name], strict=True)) for name in texts}


def _document(title: str, scores: ComponentScores, rows: list[str], heatmaps: Any) -> str:
    """The whole HTML page, with its Content-Security-Policy (inline pictures only)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="daskdict {__version__}">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(scores.components)} components scored for {len(scores.features)} features
({html.escape(scores.method)} scores{'' if scores.n_rows is None else f', {scores.n_rows} items'}).
</p>
<img class="figure" alt="scores" src="{_scores_figure(scores)}">
<h2>Features</h2>
<table><thead><tr><th>feature</th><th>top components</th><th>retrieved through them</th>
</tr></thead><tbody>{''.join(rows)}</tbody></table>
{'<h2>Heat maps</h2>' + _heatmaps_html(heatmaps) if heatmaps else ''}
</body></html>
"""


def write_components_report(path: str | os.PathLike, scores: ComponentScores, *,
                            aligned: Mapping[str, Any] | None = None,
                            feature_texts: Mapping[str, Sequence[str]] | None = None,
                            text_encoder: str | os.PathLike | Callable | None = None,
                            store: EmbeddingStore | None = None,
                            images: Sequence | Callable | None = None,
                            heatmaps: Sequence | None = None, k_components: int = 3,
                            n_items: int = 6, n_values: int = 3,
                            title: str = "daskdict components",
                            overwrite: bool = False) -> Path:
    """Write an offline HTML report of the component scores and what they retrieve.

    Parameters
    ----------
    path : path
        The ``.html`` file to write; never an input.
    scores : ComponentScores
        From :func:`daskdict.component_scores`.
    aligned : mapping of str to array of shape (n_items, D), optional
        The aligned contributions the scores were computed on; with ``feature_texts``, each
        feature's first ``n_values`` texts retrieve items through its top components.
    feature_texts : mapping of str to sequence of str, optional
        The features' values as texts (``{"pattern": ["striped", "spotted"]}``).
    text_encoder : str, path-like or callable, optional
        Embeds the texts in the aligned space (a CLIP, or ``texts -> vectors``).
    store : EmbeddingStore, optional
        Its captions name the retrieved items when there are no ``images``.
    images : sequence indexed by row, or callable ``row -> image``, optional
        Thumbnails of the retrieved items.
    heatmaps : sequence of (title, image, token scores, (rows, cols)), optional
        Heat maps over images (token scores from
        :func:`daskdict.decomposition.token_heatmap`, patch tokens only).
    k_components, n_items, n_values : int
        Components per feature, items per text, texts per feature.
    title : str
    overwrite : bool, default=False
        Replace a report that daskdict wrote at ``path`` (never any other file).

    Returns
    -------
    Path

    Raises
    ------
    InvalidInputError
        For bad inputs, before anything is written.
    OutputNotWritableError
        If ``path`` is an input, exists and is not a daskdict report, or exists and
        ``overwrite`` is False.
    """
    _check_inputs(scores, store, images, heatmaps)
    for name, value in (("k_components", k_components), ("n_items", n_items),
                        ("n_values", n_values)):
        check_positive_int(name, value)
    if feature_texts is not None and aligned is None:
        raise InvalidInputError("feature_texts retrieve items through aligned=: pass the "
                                "aligned contributions the scores were computed on.")
    inputs = [] if store is None else [store.path]
    if images is not None and not callable(images):
        inputs += [i for i in images if isinstance(i, str | os.PathLike)]
    path = check_report_output(path, inputs, overwrite)
    queries = _queries(feature_texts, text_encoder, scores, n_values)
    captions = None if store is None else store.captions
    n_rows = None if aligned is None else next(iter(aligned.values())).shape[0]
    rows = _feature_rows(scores, aligned, queries, images, captions,
                         min(k_components, len(scores.components)),
                         n_items if n_rows is None else min(n_items, n_rows))
    document = _document(title, scores, rows, heatmaps)
    write_text(path, document)
    return path
