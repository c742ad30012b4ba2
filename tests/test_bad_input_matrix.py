"""The bad-input matrix: every entry point of the Python API and of the ``daskdict`` command, fed
every kind of bad input, refuses it cleanly (see :mod:`helpers_bad_input`): a DaskdictError (exit
code 2 and one ``daskdict: error:`` line on the command line) naming the offending argument or
path, the inputs byte-identical, nothing written at the refused output.

Each case copies tiny objects of every kind (store, dictionary, codes, explanations, graph,
report, plan, images) into its own folder, so one snapshot of that folder sees any change to an
input and any file created beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from helpers_bad_input import (
    CHUNK,
    NOT_ZARR,
    UNWRITABLE,
    D,
    K,
    N,
    Objects,
    S,
    api_refused,
    build_golden,
    check,
    cli_refused,
    copy_objects,
    planted_rows,
    snapshot,
    tree_hashes,
)

import daskdict
from daskdict.errors import (
    DaskdictError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)
from daskdict.report.html import write_report

FIT = {"n_atoms": K, "n_nonzero": S, "n_iter": 1, "random_state": 0, "client": "sync",
       "verbose": False}
PLAN = {"n_samples": 10_000, "n_atoms": K, "n_nonzero": S, "n_workers": 1,
        "calibration_rows": CHUNK, "client": "sync"}


@pytest.fixture(scope="session")
def golden(tmp_path_factory) -> dict[str, Path]:
    return build_golden(tmp_path_factory.mktemp("golden"))


@pytest.fixture
def objs(golden, tmp_path, monkeypatch) -> Objects:
    # a model name that is not found must fail at once, never wait on the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return copy_objects(golden, tmp_path)


def no_model(o: Objects) -> str:
    return str(o.root / "no-such-model")


# --------------------------------------------------------------------------- bad input paths

# entry point -> a call reading the path; each expects an embedding store, data, or a saved object
READERS: dict[str, Callable[[Objects, Path], Callable[[], Any]]] = {
    "open_store": lambda o, p: lambda: daskdict.open_store(p),
    "fit": lambda o, p: lambda: daskdict.fit(p, **FIT),
    "encode": lambda o, p: (lambda m: lambda: m.encode(p, client="sync"))(o.model()),
    "Dictionary.load": lambda o, p: lambda: daskdict.Dictionary.load(p),
    "daskdict.load": lambda o, p: lambda: daskdict.load(p),
    "Codes.load": lambda o, p: lambda: daskdict.Codes.load(p),
    "Explanations.load": lambda o, p: lambda: daskdict.Explanations.load(p),
    "ConceptGraph.load": lambda o, p: lambda: daskdict.ConceptGraph.load(p),
    "explain(codes)": lambda o, p: lambda: daskdict.explain(p, o.store),
    "explain(store)": lambda o, p: (lambda c: lambda: daskdict.explain(c, p))(o.codes_object()),
    "fit_layers": lambda o, p: lambda: daskdict.fit_layers(p, n_atoms=K, n_nonzero=S, n_iter=1,
                                                           client="sync", verbose=False),
    "plan": lambda o, p: lambda: daskdict.plan(p, **PLAN),
    "embed(images)": lambda o, p: lambda: daskdict.embed(p, o.root / "out.zarr",
                                                         model=no_model(o), verbose=False),
}
# those that need a group: a bare Zarr array is the wrong thing for them
GROUP_READERS = ("open_store", "Dictionary.load", "daskdict.load", "Codes.load",
                 "Explanations.load", "ConceptGraph.load", "explain(codes)", "explain(store)",
                 "fit_layers")


@pytest.mark.parametrize("bad", NOT_ZARR)
@pytest.mark.parametrize("entry", list(READERS))
def test_reader_refuses_a_path_that_is_not_its_input(objs, entry, bad):
    path = objs.bad(bad)
    call = READERS[entry](objs, path)
    api_refused(call, [str(path)], root=objs.root,
                error=StoreNotFoundError if bad == "missing" else DaskdictError,
                absent=[objs.root / "out.zarr"])


@pytest.mark.parametrize("entry", GROUP_READERS)
def test_reader_refuses_a_bare_zarr_array(objs, entry):
    path = objs.bad("bare-array")
    api_refused(READERS[entry](objs, path), [str(path)], root=objs.root,
                error=InvalidInputError)


# (entry point, the kind of object given to it) where another kind is expected
WRONG_KIND = [("open_store", "dictionary"), ("open_store", "codes"), ("fit", "dictionary"),
              ("fit", "graph"), ("encode", "codes"), ("Dictionary.load", "store"),
              ("Dictionary.load", "codes"),
              ("Codes.load", "dictionary"), ("Codes.load", "store"),
              ("Explanations.load", "report"), ("Explanations.load", "graph"),
              ("Explanations.load", "plan"), ("ConceptGraph.load", "plan"),
              ("ConceptGraph.load", "dictionary"), ("explain(codes)", "store"),
              ("explain(codes)", "graph"), ("explain(store)", "dictionary"),
              ("fit_layers", "dictionary"), ("plan", "codes"), ("fit", "codes"),
              ("encode", "dictionary"), ("plan", "dictionary")]


@pytest.mark.parametrize("entry, kind", WRONG_KIND, ids=[f"{e}-{k}" for e, k in WRONG_KIND])
def test_reader_refuses_an_object_of_another_kind(objs, entry, kind):
    path = getattr(objs, kind)
    api_refused(READERS[entry](objs, path), [str(path)], root=objs.root,
                error=InvalidInputError)


# --------------------------------------------------------------------------- bad output paths

# writer -> a call writing to ``out``, with overwrite=True where the case says (and the writer
# has such a switch: embed's is resume=False, "start over")
Writer = Callable[[Objects, Path, bool], Callable[[], Any]]
WRITERS: dict[str, Writer] = {
    "create_store": lambda o, p, ow: lambda: daskdict.create_store(
        p, {"final": planted_rows(20)}, overwrite=ow),
    "fit(out)": lambda o, p, ow: lambda: daskdict.fit(o.store, out=p, overwrite=ow, **FIT),
    "Dictionary.save": lambda o, p, ow: (lambda m: lambda: m.save(p, overwrite=ow))(o.model()),
    "Codes.save": lambda o, p, ow: (lambda c: lambda: c.save(p, overwrite=ow))(
        o.codes_object()),
    "encode(out)": lambda o, p, ow: (lambda m: lambda: m.encode(
        o.store, out=p, overwrite=ow, client="sync"))(o.model()),
    "Explanations.save": lambda o, p, ow: (lambda e: lambda: e.save(p, overwrite=ow))(
        o.explanations_object()),
    "write_report": lambda o, p, ow: (lambda e: lambda: write_report(p, e, overwrite=ow))(
        o.explanations_object()),
    "ConceptGraph.save": lambda o, p, ow: (lambda g: lambda: g.save(p, overwrite=ow))(
        o.graph_object()),
    "Plan.save": lambda o, p, ow: (lambda plan: lambda: plan.save(p, overwrite=ow))(
        o.plan_object()),
    "ConceptGraph.fit(checkpoint)": lambda o, p, ow: lambda: daskdict.ConceptGraph(
        n_models=2, min_positives=2, random_state=0, client="sync").fit(
        [sp.random(N, 6, density=0.3, random_state=1), sp.random(N, 5, density=0.3,
                                                                 random_state=2)],
        checkpoint=p),
    "fit(checkpoint)": lambda o, p, ow: lambda: daskdict.fit(o.store, checkpoint=p, **FIT),
    "fit_layers(out_dir)": lambda o, p, ow: lambda: daskdict.fit_layers(
        o.store, n_atoms=K, n_nonzero=S, n_iter=1, out_dir=p, client="sync", verbose=False),
    "embed(out)": lambda o, p, ow: lambda: daskdict.embed(o.images, p, model=no_model(o),
                                                          resume=not ow, verbose=False),
}
# what each writer writes, to make "an existing output of the same kind" and "another kind"
SAME_KIND = {"create_store": "store", "fit(out)": "dictionary", "Dictionary.save": "dictionary",
             "Codes.save": "codes",
             "encode(out)": "codes", "Explanations.save": "explanations",
             "write_report": "report", "ConceptGraph.save": "graph", "Plan.save": "plan"}
OTHER_KIND = {"create_store": "dictionary", "fit(out)": "codes", "Dictionary.save": "store",
              "Codes.save": "dictionary",
              "encode(out)": "dictionary", "Explanations.save": "graph", "write_report": "store",
              "ConceptGraph.save": "codes", "Plan.save": "explanations",
              "ConceptGraph.fit(checkpoint)": "store",
              "fit(checkpoint)": "dictionary", "fit_layers(out_dir)": "dictionary",
              "embed(out)": "dictionary"}
# writers with an input path: the output may be neither that input nor inside it
INPUT_OF = {"fit(out)": "store", "encode(out)": "store", "fit(checkpoint)": "store",
            "fit_layers(out_dir)": "store", "embed(out)": "images"}
FILE_WRITERS = ("Explanations.save", "write_report", "Plan.save")


def _output_cases() -> list:
    cases = []
    for writer in WRITERS:
        cases.append(pytest.param(writer, "unwritable", id=f"{writer}-unwritable"))
        cases.append(pytest.param(writer, "other-kind", id=f"{writer}-other-kind"))
        cases.append(pytest.param(writer, "not-daskdict", id=f"{writer}-not-daskdict"))
        if writer in SAME_KIND:
            cases.append(pytest.param(writer, "exists", id=f"{writer}-exists"))
        if writer in INPUT_OF:
            cases.append(pytest.param(writer, "is-input", id=f"{writer}-is-input"))
            cases.append(pytest.param(writer, "inside-input", id=f"{writer}-inside-input"))
    return cases


def output_path(o: Objects, writer: str, case: str) -> Path:
    """The refused output of ``case`` for ``writer``."""
    if case == "unwritable":
        return UNWRITABLE.with_suffix(".html" if writer in FILE_WRITERS else ".zarr")
    if case == "other-kind":
        return getattr(o, OTHER_KIND[writer])
    if case == "not-daskdict":  # what a user keeps: never replaced by a daskdict output
        # (an unmarked file counts as a report, io.formats.check_output: a folder is not one)
        return o.bad({"Explanations.save": "json", "Plan.save": "json",
                      "write_report": "empty-folder"}.get(writer, "text"))
    if case == "exists":
        return getattr(o, SAME_KIND[writer])
    if case == "is-input":
        return getattr(o, INPUT_OF[writer])
    return getattr(o, INPUT_OF[writer]) / "out.zarr"  # inside the input


@pytest.mark.parametrize("writer, case", _output_cases())
def test_writer_refuses_a_bad_output(objs, writer, case):
    """Even overwrite=True replaces only an output of the same kind, never an input."""
    out = output_path(objs, writer, case)
    call = WRITERS[writer](objs, out, case not in ("exists", "unwritable"))
    api_refused(call, [str(out)], root=objs.root, error=OutputNotWritableError, absent=[out]
                if case in ("unwritable", "inside-input") else [])


# --------------------------------------------------------------------------- bad data


def _rows(kind: str) -> np.ndarray:
    data = planted_rows()
    if kind == "nan":
        data[37, 2] = np.nan
    elif kind == "inf":
        data[37, 0] = np.inf
    elif kind == "-inf":
        data[37, 5] = -np.inf
    elif kind == "1-D":
        return data[0]
    elif kind == "3-D":
        return data.reshape(N, 2, D // 2)
    elif kind == "strings":
        return np.full((N, D), "x")
    return data


# data -> what the message names
BAD_DATA = {"nan": ("NaN", "row 37"), "inf": ("inf", "row 37"), "-inf": ("inf", "row 37"),
            "1-D": ("2-D",), "3-D": ("2-D",), "strings": (("floating", "dtype", "<U1"),)}
DATA_USERS: dict[str, Callable[[Objects, np.ndarray], Callable[[], Any]]] = {
    "fit": lambda o, x: lambda: daskdict.fit(x, **FIT),
    "KSVD.fit": lambda o, x: lambda: daskdict.KSVD(K, S, 1, random_state=0,
                                                    client="sync").fit(x),
    "KSVD.transform": lambda o, x: (lambda est: lambda: est.transform(x))(
        daskdict.KSVD(K, S, 1, random_state=0, client="sync").fit(planted_rows())),
    "encode": lambda o, x: (lambda m: lambda: m.encode(x, client="sync"))(o.model()),
    "encode(store)": lambda o, x: (lambda m, s: lambda: m.encode(s, client="sync"))(
        o.model(), _store_of(o, x)),
    "plan": lambda o, x: lambda: daskdict.plan(x, **PLAN),
}


def _store_of(o: Objects, rows: np.ndarray) -> Path:
    """A store of finite planted rows, then ``rows`` written into its layer by hand."""
    path = o.root / "in" / "data.zarr"
    daskdict.create_store(path, {"final": planted_rows()}, chunk_rows=CHUNK)
    zarr.open_array(path / "layers" / "final", mode="r+")[...] = rows
    return path


# a store's layer is 2-D float32 by construction (test_bad_input.py covers bad stores), and a
# plan times its calibration rows without scanning the data for NaN
NOT_APPLICABLE = {("encode(store)", "1-D"), ("encode(store)", "3-D"),
                  ("encode(store)", "strings"), ("plan", "nan"), ("plan", "inf"),
                  ("plan", "-inf")}


@pytest.mark.parametrize(("entry", "data"), [
    (entry, data) for entry in DATA_USERS for data in BAD_DATA
    if (entry, data) not in NOT_APPLICABLE])
def test_bad_data_is_refused(objs, entry, data):
    rows = _rows(data)
    api_refused(DATA_USERS[entry](objs, rows), BAD_DATA[data], root=objs.root,
                error=InvalidInputError)


@pytest.mark.parametrize("data", ["1-D", "3-D", "strings", "beyond-float32"])
def test_create_store_refuses_bad_layers(objs, data):
    # float64 values past float32's range would be stored as inf
    rows = planted_rows().astype(np.float64) * 1e40 if data == "beyond-float32" else _rows(data)
    out = objs.root / "new.zarr"
    api_refused(lambda: daskdict.create_store(out, {"final": rows}), ["'final'"],
                root=objs.root, error=InvalidInputError, absent=[out])


@pytest.mark.parametrize("entry", ["fit", "KSVD.fit", "encode"])
def test_values_near_the_float32_limit(objs, entry):
    """Rows of about 3e38 (finite in float32, their squares are not): refused with a named
    error, or a finite answer; never NaN or inf in the atoms, history or codes."""
    data = planted_rows()
    data[11] = 3e38
    data[12, 0] = -3e38
    before = snapshot(objs.root)
    try:
        result = DATA_USERS[entry](objs, data)()
    except daskdict.DaskdictError as exc:
        check("row 11" in str(exc) or "3e+38" in str(exc), f"the row is not named: {exc}")
        check(snapshot(objs.root) == before, "the disk changed")
        return
    if isinstance(result, daskdict.KSVD):
        result = result.dictionary_
    if isinstance(result, daskdict.Dictionary):
        check(np.isfinite(result.atoms).all(), "NaN/inf atoms")
        for record in result.history:
            bad = {k: v for k, v in record.items() if isinstance(v, float) and not np.isfinite(v)}
            check(not bad, f"not refused, and a non-finite history: {bad}")
    else:
        rows = np.flatnonzero(~np.isfinite(np.asarray(result.values)).all(axis=1))
        check(rows.size == 0, f"not refused, and NaN/inf codes in rows {rows}")


# --------------------------------------------------------------------------- hyper-parameters

BAD_FIT_PARAMS = [("n_atoms", 0), ("n_atoms", -1), ("n_atoms", 1.5), ("n_atoms", True),
                  ("n_atoms", "3"), ("n_nonzero", 0), ("n_nonzero", -1), ("n_nonzero", K + 1),
                  ("n_iter", 0), ("n_iter", -1), ("coder", "nope"), ("update", "nope"),
                  ("tol", -1)]


def _fit_param_cases() -> list:
    return [pytest.param(name, value, id=f"{name}={value!r}") for name, value in BAD_FIT_PARAMS]


@pytest.mark.parametrize("name, value", _fit_param_cases())
def test_fit_refuses_bad_hyper_parameters(objs, name, value):
    ck = objs.root / "ck.zarr"
    kw = {**FIT, name: value, "checkpoint": ck}
    api_refused(lambda: daskdict.fit(objs.store, **kw), [name], root=objs.root,
                error=InvalidInputError, absent=[ck])


@pytest.mark.parametrize("name, value", _fit_param_cases())
def test_ksvd_refuses_bad_hyper_parameters(objs, name, value):
    params = {"n_atoms": K, "n_nonzero": S, "n_iter": 1, name: value}
    estimator = daskdict.KSVD(**params, random_state=0, client="sync")
    api_refused(lambda: estimator.fit(planted_rows()), [name], root=objs.root,
                error=InvalidInputError)


@pytest.mark.parametrize("name, value", [("n_nonzero", 0), ("n_nonzero", -1),
                                         ("n_nonzero", 1.5), ("n_nonzero", True),
                                         ("n_nonzero", "3"), ("n_nonzero", K + 1),
                                         ("coder", "nope"), ("tol", -1)])
def test_encode_refuses_bad_hyper_parameters(objs, name, value):
    model = objs.model()
    out = objs.root / "codes-out.zarr"
    api_refused(lambda: model.encode(objs.store, out=out, client="sync", **{name: value}),
                [name], root=objs.root, error=InvalidInputError, absent=[out])


OTHER_PARAMS = [
    ("plan", "n_atoms", 0), ("plan", "n_atoms", 1.5), ("plan", "n_atoms", True),
    ("plan", "n_atoms", "3"), ("plan", "n_nonzero", 0), ("plan", "n_nonzero", D + 1),
    ("plan", "n_samples", 0), ("plan", "n_workers", -1),
    ("fit_layers", "n_atoms", 0), ("fit_layers", "n_atoms", "3"),
    ("fit_layers", "n_nonzero", -1), ("fit_layers", "n_iter", 0),
    ("ConceptGraph", "n_models", 0), ("ConceptGraph", "n_models", 1.5),
    ("ConceptGraph", "n_models", True), ("ConceptGraph", "n_models", "3"),
    ("ConceptGraph", "penalty", -1), ("ConceptGraph", "min_usage", 1.5),
    ("ConceptGraph", "test_size", 0), ("explain", "method", "nope"), ("explain", "top_n", 0),
    ("cluster", "kind", "nope"), ("cluster", "jobs", 0), ("cluster", "jobs", -1),
    ("cluster", "jobs", 1.5), ("cluster", "jobs", True), ("cluster", "jobs", "3"),
    ("embed", "batch_size", 0), ("embed", "chunk_rows", -1), ("embed", "precision", "nope"),
]


def _other_call(o: Objects, entry: str, name: str, value: Any) -> Callable[[], Any]:
    if entry == "plan":
        return lambda: daskdict.plan(o.store, **{**PLAN, name: value})
    if entry == "fit_layers":
        kw = {"n_atoms": K, "n_nonzero": S, "n_iter": 1, name: value}
        return lambda: daskdict.fit_layers(o.store, out_dir=o.root / "work", client="sync",
                                           verbose=False, **kw)
    if entry == "ConceptGraph":
        codes = [sp.random(N, 6, density=0.3, random_state=1),
                 sp.random(N, 5, density=0.3, random_state=2)]
        graph = daskdict.ConceptGraph(**{"n_models": 2, "min_positives": 2, name: value},
                                      random_state=0, client="sync")
        return lambda: graph.fit(codes, checkpoint=o.root / "graph-ck")
    if entry == "explain":
        return lambda: daskdict.explain(o.codes, o.store, **{name: value})
    if entry == "cluster":
        return lambda: daskdict.cluster(**{name: value})
    return lambda: daskdict.embed(o.images, o.root / "out.zarr", model=no_model(o),
                                  verbose=False, **{name: value})


@pytest.mark.parametrize("entry, name, value", OTHER_PARAMS,
                         ids=[f"{e}-{n}={v!r}" for e, n, v in OTHER_PARAMS])
def test_other_entry_points_refuse_bad_parameters(objs, entry, name, value):
    api_refused(_other_call(objs, entry, name, value), [name], root=objs.root,
                error=InvalidInputError,
                absent=[objs.root / "work", objs.root / "graph-ck", objs.root / "out.zarr"])


def test_concept_graph_refuses_bad_codes(objs):
    good = sp.random(N, 5, density=0.3, random_state=2, format="csr")
    nan = sp.random(N, 6, density=0.3, random_state=1, format="csr")
    nan.data[3] = np.nan
    for codes, fragment in (([good], "2 layers"), ([nan, good], "NaN"),
                            ([np.full((N, 4), "x"), good], "dtype"),
                            ([np.ones(N), good], "2-D"),
                            ([good[: N - 1], good], "samples")):
        api_refused(lambda codes=codes: daskdict.ConceptGraph(client="sync").fit(codes),
                    [fragment], root=objs.root, error=InvalidInputError)


# --------------------------------------------------------------------------- command line

CLI_FIT = ["--atoms", K, "--nonzero", S, "--iters", 1, "--seed", 0, "--in-process", "--quiet"]
# a demo that, if a bad case is not refused, still ends in seconds
CLI_DEMO = ["--samples", 200, "--features", D, "--atoms", K, "--nonzero", S, "--iters", 1,
            "--chunk-rows", 100, "--in-process", "--quiet"]


def _cli_cases() -> list:
    """(id, builder): the builder takes the objects and returns (argv, fragments, absent)."""
    miss = lambda o: o.bad("missing")  # noqa: E731
    cases = []
    for bad in NOT_ZARR:
        for verb in ("fit", "encode", "info", "plan"):
            cases.append((f"{verb}-input-{bad}", lambda o, verb=verb, bad=bad: (
                _verb_argv(o, verb, o.bad(bad)), [str(o.bad(bad))], [o.root / "out.zarr"])))
    cases += [
        ("fit-input-dictionary", lambda o: (_verb_argv(o, "fit", o.dictionary),
                                            [str(o.dictionary)], [o.root / "out.zarr"])),
        ("encode-dictionary-missing", lambda o: (
            ["encode", o.store, "--dictionary", miss(o), "--out", o.root / "c.zarr",
             "--in-process"], [str(miss(o))], [o.root / "c.zarr"])),
        ("encode-dictionary-is-a-store", lambda o: (
            ["encode", o.store, "--dictionary", o.store, "--out", o.root / "c.zarr",
             "--in-process"], [str(o.store)], [o.root / "c.zarr"])),
        ("encode-dictionary-npy", lambda o: (
            ["encode", o.store, "--dictionary", o.bad("npy"), "--out", o.root / "c.zarr",
             "--in-process"], [str(o.bad("npy"))], [o.root / "c.zarr"])),
        ("report-store-missing", lambda o: (
            ["report", miss(o), "--codes", o.codes, "--out", o.root / "r.html",
             "--in-process"], [str(miss(o))], [o.root / "r.html"])),
        ("report-codes-is-a-dictionary", lambda o: (
            ["report", o.store, "--codes", o.dictionary, "--out", o.root / "r.html"],
            [str(o.dictionary)], [o.root / "r.html"])),
        ("report-explanations-is-html", lambda o: (
            ["report", o.store, "--codes", o.codes, "--explanations", o.bad("html"),
             "--out", o.root / "r.html"], [str(o.bad("html"))], [o.root / "r.html"])),
        ("report-graph-is-a-dictionary", lambda o: (
            ["report", o.store, "--codes", o.codes, "--graph", o.dictionary, "--graph-layer", 1,
             "--out", o.root / "r.html"], [str(o.dictionary)], [o.root / "r.html"])),
        ("report-top-n-0", lambda o: (
            ["report", o.store, "--codes", o.codes, "--top-n", 0, "--out", o.root / "r.html"],
            [("top_n", "--top-n")], [o.root / "r.html"])),
        ("graph-store-missing", lambda o: (
            ["graph", miss(o), "--out", o.root / "g.zarr", "--in-process", "--quiet"],
            [str(miss(o))], [o.root / "g.zarr"])),
        ("graph-store-npy", lambda o: (
            ["graph", o.bad("npy"), "--out", o.root / "g.zarr", "--in-process", "--quiet"],
            [str(o.bad("npy"))], [o.root / "g.zarr"])),
        ("embed-images-missing", lambda o: (
            ["embed", miss(o), "--out", o.root / "e.zarr", "--model", no_model(o), "--quiet"],
            [str(miss(o))], [o.root / "e.zarr"])),
        ("embed-images-text", lambda o: (
            ["embed", o.bad("text"), "--out", o.root / "e.zarr", "--model", no_model(o),
             "--quiet"], [str(o.bad("text"))], [o.root / "e.zarr"])),
    ]
    return cases + _cli_output_cases() + _cli_param_cases()


def _verb_argv(o: Objects, verb: str, source: Path) -> list:
    out = o.root / "out.zarr"
    if verb == "fit":
        return ["fit", source, "--out", out, *CLI_FIT]
    if verb == "encode":
        return ["encode", source, "--dictionary", o.dictionary, "--out", out, "--in-process"]
    if verb == "plan":
        return ["plan", source, "--samples", 10_000, "--workers", 1, "--atoms", K,
                "--nonzero", S, "--calibration-rows", CHUNK, "--in-process", "--quiet"]
    return ["info", source]


# verb -> argv with the output OUT (a placeholder), and whether it takes --force
CLI_WRITERS: dict[str, Callable[[Objects], list]] = {
    "fit": lambda o: ["fit", o.store, "--out", "OUT", *CLI_FIT],
    "fit-checkpoint": lambda o: ["fit", o.store, "--out", o.root / "d.zarr", "--checkpoint",
                                 "OUT", *CLI_FIT],
    "encode": lambda o: ["encode", o.store, "--dictionary", o.dictionary, "--out", "OUT",
                         "--in-process"],
    "report": lambda o: ["report", o.store, "--codes", o.codes, "--out", "OUT",
                         "--in-process"],
    "graph": lambda o: ["graph", o.store, "--out", "OUT", "--atoms", K, "--nonzero", S,
                        "--iters", 1, "--models", 2, "--in-process", "--quiet"],
    "embed": lambda o: ["embed", o.images, "--out", "OUT", "--model", no_model(o), "--quiet"],
    "plan": lambda o: [*_verb_argv(o, "plan", o.store), "--out", "OUT"],
    "demo": lambda o: ["demo", "--out", "OUT", *CLI_DEMO],
}
CLI_SAME = {"fit": "dictionary", "encode": "codes", "report": "report", "graph": "graph",
            "plan": "plan"}
CLI_OTHER = {"fit": "codes", "fit-checkpoint": "dictionary", "encode": "dictionary",
             "report": "store", "graph": "dictionary", "embed": "dictionary",
             "plan": "explanations", "demo": "store"}
CLI_INPUT = {"fit": "store", "fit-checkpoint": "store", "encode": "store", "report": "store",
             "graph": "store", "embed": "images", "plan": "store"}


def _cli_output_cases() -> list:
    cases = []
    for verb, argv in CLI_WRITERS.items():
        names = ["unwritable", "other-kind", "not-daskdict"]
        names += ["exists"] if verb in CLI_SAME else []
        names += ["is-input", "inside-input"] if verb in CLI_INPUT else []
        for case in names:
            cases.append((f"{verb}-out-{case}",
                          lambda o, verb=verb, argv=argv, case=case: _cli_output(
                              o, verb, argv(o), case)))
    return cases


def _cli_output(o: Objects, verb: str, argv: list, case: str) -> tuple[list, list, list]:
    suffix = {"report": ".html", "plan": ".json", "demo": ""}.get(verb, ".zarr")
    force = [] if case in ("exists", "unwritable") else ["--force"]
    if case == "unwritable":
        out = UNWRITABLE.with_suffix(suffix)
    elif case == "other-kind":
        out = getattr(o, CLI_OTHER[verb])
    elif case == "not-daskdict":
        # an unmarked file counts as a report (io.formats.check_output): a folder is not one
        out = o.bad("empty-folder" if verb == "report" else "text")
    elif case == "exists":
        out = getattr(o, CLI_SAME[verb])
    elif case == "is-input":
        out = getattr(o, CLI_INPUT[verb])
    else:
        out = getattr(o, CLI_INPUT[verb]) / f"out{suffix}"
    argv = [out if arg == "OUT" else arg for arg in argv] + force
    return argv, [str(out)], [out] if case in ("unwritable", "inside-input") else []


CLI_PARAMS = [("fit", "--atoms", 0), ("fit", "--atoms", -1), ("fit", "--atoms", 1.5),
              ("fit", "--nonzero", 0), ("fit", "--nonzero", K + 1), ("fit", "--iters", 0),
              ("fit", "--coder", "nope"), ("fit", "--update", "nope"), ("fit", "--tol", -1),
              ("graph", "--atoms", 0), ("graph", "--models", 0), ("plan", "--atoms", 0),
              ("plan", "--samples", 0), ("plan", "--workers", 0), ("embed", "--batch-size", 0),
              ("demo", "--samples", 0), ("demo", "--atoms", 0), ("demo", "--nonzero", 0)]


def _cli_param_cases() -> list:
    cases = []
    for verb, flag, value in CLI_PARAMS:
        def build(o, verb=verb, flag=flag, value=value):
            argv = [str(a) for a in CLI_WRITERS[verb](o)]
            argv = [str(o.root / "out") if a == "OUT" else a for a in argv]
            if flag in argv:
                argv[argv.index(flag) + 1] = str(value)
            else:
                argv += [flag, str(value)]
            name = flag.removeprefix("--").replace("-", "_")
            return argv, [(flag, name, name.rstrip("s"))], [o.root / "out"]
        cases.append((f"{verb}{flag}={value}", build))
    return cases


CLI_CASES = _cli_cases()


@pytest.mark.parametrize("build", [c[1] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(objs, capsys, build):
    argv, fragments, absent = build(objs)
    cli_refused(capsys, argv, fragments, root=objs.root, absent=absent)


def _python_m(*args: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "daskdict", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_subprocess_refusals_are_one_line(objs):
    """As a user runs it: a non-Zarr file to ``info``, a store given as the dictionary."""
    npy = objs.bad("npy")
    before = {p: tree_hashes(p) for p in (npy, objs.store)}
    for args, fragment in ((["info", npy], str(npy)),
                           (["encode", objs.store, "--dictionary", objs.store, "--out",
                             objs.root / "c.zarr", "--in-process"], str(objs.store))):
        result = _python_m(*args)
        assert result.returncode == 2, (args, result.returncode, result.stderr[-600:])
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("daskdict"), result.stderr
        assert ": error: " in lines[0] and fragment in lines[0], lines[0]
        assert result.stdout == ""
    assert {p: tree_hashes(p) for p in (npy, objs.store)} == before
    assert not (objs.root / "c.zarr").exists()
