"""Saved explanations: the header of io.formats, the writer rule, and reads that change nothing."""

import ast
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import daskdict
from daskdict.errors import InvalidInputError, OutputNotWritableError, StoreNotFoundError
from daskdict.explanations.explain import Explanations, explain
from daskdict.explanations.llm import summarize_rows
from daskdict.io import formats
from daskdict.learn.dictionary import Codes

CAPTIONS = ["a red kite", "a red kite and a boat", "a boat", "a boat at sea", "a red kite"]
ROWS = [{"atom": 0, "n_active": 3, "frequency": 0.6, "top_items": [0, 1], "top_rows": [0, 1],
         "top_captions": ["a red kite", "a red kite and a boat"], "themes": ["kite"],
         "theme_scores": [1.5], "summary": "kite", "score": 1.5, "status": "ok"}]


def hashes(root: Path) -> dict[str, str]:
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def made(tmp_path):
    """A store with captions, codes saved beside it, and explain(codes path, store path)."""
    store = daskdict.create_store(tmp_path / "s.zarr", {"final": np.eye(5, 3)},
                                  captions=CAPTIONS)
    indices = np.array([[0, -1], [0, 1], [1, -1], [1, -1], [0, -1]], dtype=np.int32)
    codes_path = Codes(indices, np.ones((5, 2)), 2).save(tmp_path / "codes.zarr")
    return store.path, codes_path, explain(codes_path, store.path, min_count=1)


def test_json_header_comes_from_formats_and_load_is_registered(tmp_path):
    path = Explanations(ROWS, {"method": "keywords"}).save(tmp_path / "e.json")
    header = json.loads(path.read_text())["daskdict"]
    assert header["kind"] == "explanations" and header["format"] == formats.FORMAT_VERSION
    assert header["version"] == daskdict.__version__ and header["method"] == "keywords"
    assert formats.kind_of(path) == "explanations"
    loaded = formats.load(path)
    assert isinstance(loaded, Explanations) and loaded[0]["themes"] == ["kite"]
    assert "version" not in loaded.meta and "format" not in loaded.meta
    described = formats.describe(path)
    assert described["n_atoms"] == 1 and described["status"] == {"ok": 1}


def test_load_refuses_what_is_not_explanations(tmp_path):
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"daskdict": {"kind": "explanations", "format": 99},
                                 "rows": ROWS}))
    with pytest.raises(InvalidInputError, match="newer"):
        Explanations.load(newer)
    other = tmp_path / "plan.json"
    other.write_text(json.dumps({"daskdict": {"kind": "plan", "format": 1}}))
    with pytest.raises(InvalidInputError, match="kind='plan'"):
        Explanations.load(other)
    foreign = tmp_path / "table.csv"
    foreign.write_text("name,value\na,1\n")
    with pytest.raises(InvalidInputError, match="columns"):
        Explanations.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match=r"\.json or \.csv"):
        Explanations.load(text)
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        Explanations.load(tmp_path / "missing.json")


@pytest.mark.parametrize("name", ["e.json", "e.csv"])
def test_save_replaces_its_own_table_only_with_overwrite(tmp_path, name):
    path = Explanations(ROWS, {"method": "keywords"}).save(tmp_path / name)
    before = path.read_bytes()
    changed = Explanations([{**ROWS[0], "themes": ["boat"]}], {"method": "keywords"})
    with pytest.raises(OutputNotWritableError, match="overwrite=True"):
        changed.save(path)
    assert path.read_bytes() == before
    changed.save(path, overwrite=True)
    assert Explanations.load(path)[0]["themes"] == ["boat"]


@pytest.mark.parametrize("name, text", [("settings.json", '{"hello": 1}'),
                                        ("people.csv", "name,age\nada,36\n"),
                                        ("notes.json", "not json at all")])
def test_save_never_replaces_a_file_daskdict_did_not_write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    for overwrite in (False, True):
        with pytest.raises(OutputNotWritableError):
            Explanations(ROWS).save(path, overwrite=overwrite)
        assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_output_onto_the_codes_or_store_is_refused_before_any_work(made):
    store, codes, explanations = made
    assert explanations.meta["codes"] == str(codes)
    assert explanations.meta["store"] == str(store)
    before = {**hashes(store), **hashes(codes)}
    for out in (codes, store, codes / "table.json", store / "table.csv"):
        for overwrite in (False, True):
            with pytest.raises(OutputNotWritableError, match="is the input"):
                explanations.save(out, overwrite=overwrite)
    assert {**hashes(store), **hashes(codes)} == before
    # the sources travel with the table: a loaded copy is refused the same outputs
    loaded = Explanations.load(explanations.save(store.parent / "e.json"))
    with pytest.raises(OutputNotWritableError, match="is the input"):
        loaded.save(codes / "table.json")
    assert {**hashes(store), **hashes(codes)} == before


def test_explaining_a_path_never_changes_the_disk(made):
    """A codes folder left beside its path by a save that crashed between its two renames is
    read where it lies; explain does not move it back (a read)."""
    store, codes, explanations = made
    moved = codes.with_name(f".{codes.name}.old-12345678")
    os.replace(codes, moved)
    listing = sorted(p.name for p in codes.parent.iterdir())
    before = hashes(moved)
    again = explain(codes, store, min_count=1)
    assert [row["themes"] for row in again] == [row["themes"] for row in explanations]
    assert sorted(p.name for p in codes.parent.iterdir()) == listing
    assert hashes(moved) == before


def test_bad_counts_are_named():
    codes = Codes(np.zeros((5, 1), np.int32), np.ones((5, 1)), 2)
    with pytest.raises(InvalidInputError, match="n_top_items"):
        explain(codes, CAPTIONS, n_top_items=0)
    with pytest.raises(InvalidInputError, match="top_n"):
        explain(codes, CAPTIONS, top_n=1.5)
    with pytest.raises(InvalidInputError, match="method"):
        explain(codes, CAPTIONS, method="magic")


def test_llm_cache_is_never_another_object(tmp_path):
    """The answer cache is written back: explanations or a folder there are refused."""
    table = Explanations(ROWS, {"method": "keywords"}).save(tmp_path / "e.json")
    before = table.read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    for cache in (table, folder):
        rows = [dict(ROWS[0])]
        with pytest.raises(InvalidInputError, match="cache"):
            summarize_rows(rows, top_n=3, meta={}, summarizer=lambda s, u: "{}", cache=cache)
    assert table.read_bytes() == before and not any(folder.iterdir())


def test_falcon_does_not_import_explain_nor_private_names():
    source = Path(daskdict.explanations.falcon.__file__).read_text()
    imported = [node for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom | ast.Import)]
    modules = [getattr(node, "module", None) or node.names[0].name for node in imported]
    assert "daskdict.explanations.explain" not in modules
    assert not any(m.startswith("daskdict.evaluation") for m in modules if m)
    private = [alias.name for node in imported for alias in node.names
               if alias.name.startswith("_") and node.module != "__future__"]
    assert private == []


@pytest.mark.parametrize("method, options, fragment", [
    ("keywords", {"bogus": 1}, "bogus"),
    ("keywords", {"min_count": 0}, "min_count"),
    ("llm", {}, "summarizer"),
    ("llm", {"summarizer": print, "max_workers": 0}, "max_workers"),
    ("falcon", {}, "text_encoder"),
    ("falcon", {"text_encoder": print, "n_captions_per_image": 0}, "n_captions_per_image"),
])
def test_method_options_are_checked_before_the_store_is_encoded(tmp_path, monkeypatch, method,
                                                                options, fragment):
    store = daskdict.create_store(tmp_path / "s.zarr", {"final": np.eye(5, 3)},
                                  captions=CAPTIONS)
    model = daskdict.Dictionary(np.eye(3))

    def encode(*args, **kwargs):
        raise AssertionError("the store was encoded before the options were checked")

    monkeypatch.setattr(daskdict.Dictionary, "encode", encode)
    with pytest.raises(InvalidInputError, match=fragment):
        explain(model, store, method=method, **options)
