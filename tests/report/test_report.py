"""Auto-interpretability with a tiny random CLIP, pictures, and the HTML report in Chromium."""

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_clip import save_tiny_clip

import daskdict
from daskdict.datasets.planted import planted_images, write_named_planted_store
from daskdict.embedding.clip import CLIP, clip_text_encoder
from daskdict.evaluation.metrics import (
    LOREM_IPSUM,
    autointerp_scores,
    concept_captions,
    plot_autointerp,
    reference_scores,
)
from daskdict.explanations.explain import explain
from daskdict.learn.dictionary import Codes
from daskdict.report.html import plot_atom_grid, plot_training_curve, write_report

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "planted.zarr"
    store, _atoms, _names = write_named_planted_store(path, 3000, 32, 24, 3, 20.0,
                                                    random_state=5, chunk_rows=1000)
    model = daskdict.fit(path, n_atoms=24, n_nonzero=3, n_iter=6, random_state=0,
                         client="threads")
    codes = model.encode(path, out=path.parent / "codes.zarr", client="threads")
    return store, model, codes, explain(codes, store)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised small CLIP saved with save_pretrained, loaded by path."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from daskdict.datasets.planted import CONCEPT_NAMES, CONTEXT_WORDS, FILLER_WORDS

    words = ["a", "photo", "containing", "-", "of", "and", "in", "setting", ",",
             *CONCEPT_NAMES, *CONTEXT_WORDS, *FILLER_WORDS,
             *LOREM_IPSUM.replace(",", " ").replace(".", " ").lower().split()]
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", words)


def test_concept_captions_follow_the_concept_paper(planted):
    _, _, codes, explanations = planted
    captions = concept_captions(codes, explanations)
    first = explanations.first_themes()
    row = codes.compute()
    strongest = int(row.indices[0][np.argmax(np.abs(row.values[0]))])
    assert captions[0].startswith("A photo containing\n- " + first[strongest])
    assert captions[0].count("\n- ") == len({first[int(a)] for a in row.indices[0] if a >= 0})


def test_autointerp_runs_end_to_end_with_a_clip_loaded_by_path(planted, tiny_clip):
    store, _, codes, explanations = planted
    n = 40
    subset = Codes(np.asarray(codes.indices[:n]), np.asarray(codes.values[:n]), codes.n_atoms)
    draw = planted_images(store)
    images = [draw(row) for row in range(n)]
    scores = autointerp_scores(subset, explanations, store.captions[:n], clip=str(tiny_clip),
                               images=images)
    for kind in ("explanation", "caption", "lorem"):
        assert scores.cosine[kind].shape == (n,)
        assert np.all(np.abs(scores.cosine[kind]) <= 1 + 1e-6)
        np.testing.assert_allclose(scores.clipscore[kind],
                                   2.5 * np.maximum(scores.cosine[kind], 0))
    # the same CLIP's embeddings give the same scores when passed precomputed
    clip = CLIP(tiny_clip)
    again = autointerp_scores(subset, explanations, store.captions[:n],
                              image_embeddings=clip.encode_images(images),
                              text_encoder=clip.encode_texts)
    np.testing.assert_allclose(again.cosine["explanation"], scores.cosine["explanation"],
                               atol=1e-5)
    assert set(scores.summary()) == {"explanation", "caption", "lorem"}
    fig = plot_autointerp(scores)
    assert len(fig.axes[0].patches) > 0
    reference = reference_scores(scores.generated, store.captions[:n],
                                 clip_text_encoder(tiny_clip))
    assert reference.shape == (n,) and np.all(np.abs(reference) <= 1 + 1e-6)


def test_reference_scores_rank_a_true_match_first():
    def bag_of_words(texts):  # a transparent text encoder: word counts over a vocabulary
        vocab = ["kite", "beach", "boat", "harbour"]
        return np.array([[t.count(w) for w in vocab] for t in texts], dtype=float) + 1e-3

    scores = reference_scores(["A photo containing\n- kite", "A photo containing\n- boat"],
                              ["a kite on the beach", "a kite on the beach"], bag_of_words)
    assert scores[0] > 0.6 > scores[1]


def test_pictures(planted):
    store, model, _, explanations = planted
    fig = plot_atom_grid(explanations, 0, planted_images(store), n_images=6)
    assert len(fig.axes[1].images) == 1
    assert "concept 0" in fig.axes[0].texts[0].get_text()
    fig = plot_training_curve(model)
    assert len(fig.axes[0].lines) == 2


def test_report_is_self_contained(planted, tmp_path):
    store, model, codes, explanations = planted
    path = write_report(tmp_path / "r.html", explanations, codes=codes, model=model,
                        images=planted_images(store))
    text = path.read_text()
    assert "http:" not in text and "https:" not in text and "<link" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert text.count('class="atom"') == len(explanations)
    assert text.count("<svg") == len(explanations)


def _chromium_driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="selenium (test extra) drives Chromium")
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(binary).exists() or not Path(driver_path).exists():
        pytest.skip("Chromium and ChromeDriver are not installed (Debian: apt-get install "
                    "chromium chromium-driver; CI installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver_path)
    return webdriver.Chrome(options=options, service=service)


@pytest.mark.browser
def test_report_renders_in_headless_chromium_sorts_and_stays_offline(planted, tmp_path):
    store, model, codes, explanations = planted
    path = write_report(tmp_path / "report.html", explanations, codes=codes, model=model,
                        images=planted_images(store))
    driver = _chromium_driver(tmp_path)
    try:
        driver.get(path.as_uri())
        deadline = time.monotonic() + 30
        while driver.execute_script("return document.body.dataset.ready") != "true":
            assert time.monotonic() < deadline, "the report's script never ran"
            time.sleep(0.1)

        def column(key):
            return [float(v) for v in driver.execute_script(
                f"return Array.from(document.querySelectorAll('#atoms tbody tr'))"
                f".map(r => r.dataset.{key})")]

        concepts = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr.atom'))"
            ".map(r => r.dataset.concept)")
        assert sorted(concepts) == sorted(explanations.concepts)
        thumbnails = driver.find_elements("css selector", "td.thumbs img")
        assert thumbnails and all(img.get_attribute("naturalWidth") != "0" for img in thumbnails)
        header = driver.find_element("css selector", 'th[data-key="frequency"]')
        header.click()
        assert column("frequency") == sorted(column("frequency"), reverse=True)
        header.click()
        assert column("frequency") == sorted(column("frequency"))
        driver.find_element("css selector", 'th[data-key="score"]').click()
        scores = [s if s == s else -np.inf for s in column("score")]
        assert scores == sorted(scores, reverse=True)
        assert driver.execute_script("return document.body.dataset.sorted") == "score:desc"
        # nothing was fetched: every resource the page used is inline
        assert driver.execute_script(
            "return performance.getEntriesByType('resource').length") == 0
        sources = driver.execute_script(
            "return Array.from(document.querySelectorAll('[src],[href]'))"
            ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
        assert sources and all(s.startswith("data:") for s in sources)
        logs = [entry["message"] for entry in driver.get_log("browser")]
        assert not [m for m in logs if "Content Security Policy" in m], logs
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000
    finally:
        driver.quit()


def test_report_gains_a_concept_graph_view(tmp_path):
    """Explained atoms that are concepts of a graph layer list their parents and children."""
    from daskdict.explanations.explain import Explanations
    from daskdict.graph.estimator import ConceptGraph
    from daskdict.graph.planted import make_planted_graph

    planted = make_planted_graph(3000, (30, 30, 30), 3, random_state=0)
    graph = ConceptGraph(binarize_inputs=True, random_state=0, n_models=8).fit(planted.codes)
    n_concepts = graph.n_concepts_[1]
    rows = [{"atom": c, "n_active": 1, "frequency": 0.1, "themes": [f"concept {c}"],
             "summary": "", "score": float("nan"), "status": "ok", "top_items": [],
             "top_rows": [], "top_captions": []} for c in range(n_concepts)]
    explanations = Explanations(rows, {"method": "keywords"})
    path = write_report(tmp_path / "graph.html", explanations, graph=graph, graph_layer=1)
    page = path.read_text()
    assert "<th>concept graph</th>" in page and 'alt="concept graph: ROC curves"' in page
    # a driven concept names its planted parent, and the parent of a next-layer concept names
    # that child
    _, parent, child = min(e for e in planted.edges() if e[0] == 1)
    row = page[page.index(f'data-atom="{child}"'):]
    row = row[:row.index("</tr>")]
    assert re.search(rf"parents in layer 0: [^<]*\b{parent} \([+-]", row), row
    later = [(p, c) for lay, p, c in planted.edges() if lay == 2]
    source, target = later[0]
    row = page[page.index(f'data-atom="{source}"'):]
    row = row[:row.index("</tr>")]
    assert re.search(rf"children in layer 2: [^<]*\b{target}\b", row), row
    with pytest.raises(daskdict.InvalidInputError, match="graph_layer"):
        write_report(tmp_path / "bad.html", explanations, graph=graph, graph_layer=7)


# --------------------------------------------------------------------------- the writer rule


def _hashes(root: Path) -> dict[str, str]:
    import hashlib

    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_report_replaces_only_its_own_report_with_overwrite(planted, tmp_path):
    *_, explanations = planted
    path = write_report(tmp_path / "r.html", explanations, title="first")
    assert '<meta name="generator" content="daskdict' in path.read_text()
    before = path.read_bytes()
    with pytest.raises(daskdict.OutputNotWritableError, match="overwrite=True"):
        write_report(path, explanations, title="second")
    assert path.read_bytes() == before
    write_report(path, explanations, title="second", overwrite=True)
    assert "<title>second</title>" in path.read_text()


@pytest.mark.parametrize("name", ["page.html", "notes.txt"])
def test_report_never_replaces_a_file_daskdict_did_not_write(planted, tmp_path, name):
    *_, explanations = planted
    path = tmp_path / name
    path.write_text("<!DOCTYPE html><html><body>mine</body></html>\n")
    before = path.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(daskdict.OutputNotWritableError):
            write_report(path, explanations, overwrite=overwrite)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_report_onto_an_input_is_refused_before_any_work(planted, tmp_path):
    from PIL import Image

    store, _, codes, _ = planted
    explanations = explain(codes, store.path)
    image = tmp_path / "thumb.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    images = [image] * store.n_items
    before = {**_hashes(store.path), **_hashes(image)}
    for out in (store.path, store.path / "report.html", image):
        for overwrite in (False, True):
            with pytest.raises(daskdict.OutputNotWritableError, match="is the input"):
                write_report(out, explanations, images=images, overwrite=overwrite)
    assert {**_hashes(store.path), **_hashes(image)} == before
    assert not (store.path / "report.html").exists()
