import json
import subprocess
import sys

import numpy as np

import daskdict
from daskdict import cli
from daskdict.datasets.planted import make_planted


def test_help_lists_the_verbs():
    out = subprocess.run([sys.executable, "-m", "daskdict", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for verb in ("fit", "encode", "info", "demo"):
        assert verb in out


def test_fit_encode_info(tmp_path, capsys):
    planted = make_planted(2000, 12, 24, 3, 25.0, random_state=0)
    store = tmp_path / "emb.zarr"
    daskdict.create_store(store, {"final": planted.data}, chunk_rows=500)
    assert cli.main(["fit", str(store), "--atoms", "24", "--nonzero", "3", "--iters", "5",
                     "--out", str(tmp_path / "d.zarr"), "--seed", "0", "--in-process",
                     "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_atoms"] == 24 and 0 < result["relative_error"] < 1
    assert cli.main(["encode", str(store), "--model", str(tmp_path / "d.zarr"),
                     "--out", str(tmp_path / "c.zarr"), "--in-process"]) == 0
    capsys.readouterr()
    for path, kind in ((store, "embedding store"), (tmp_path / "d.zarr", "dictionary"),
                       (tmp_path / "c.zarr", "codes")):
        assert cli.main(["info", str(path)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["kind"] == kind
    codes = daskdict.Codes.load(tmp_path / "c.zarr")
    assert codes.shape == (2000, 24)
    assert np.asarray(codes.indices).max() < 24


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert cli.main(["fit", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o.zarr"),
                     "--in-process"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_demo_recovers_planted_atoms(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "daskdict", "demo", "--out", str(tmp_path), "--samples", "12000",
         "--features", "32", "--atoms", "48", "--nonzero", "3", "--iters", "20", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    line = next(s for s in proc.stdout.splitlines() if s.startswith("recovered"))
    recovered = int(line.split()[1])
    assert recovered >= 0.9 * 48
    assert (tmp_path / "dictionary.zarr").exists()
