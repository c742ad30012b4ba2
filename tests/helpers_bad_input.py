"""Shared pieces of the bad-input tests: tiny daskdict objects of every kind, bad paths, snapshots
of folders, and the checks that a call was refused cleanly (through Python or the command line).

A refusal is clean when the error is a :class:`daskdict.errors.DaskdictError` whose one-line
message names the offending argument or path, and the disk is left as it was: every file under the
watched folder byte-identical and nothing created (no output, no temporary sibling, no work folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import daskdict
from daskdict.cli.app import main as cli_main
from daskdict.datasets.planted import make_planted
from daskdict.errors import DaskdictError
from daskdict.report.html import write_report

# tiny: every refusal must come before any work, and a case that is not refused must still end fast
N, D, K, S, CHUNK = 240, 8, 16, 2, 60
LAYERS = ("final", "hidden_00", "hidden_01")
# an output path no process can create, whatever its rights (os.access says yes to root)
UNWRITABLE = Path("/proc/daskdict-bad-input.zarr")
# paths that are not what an entry point expects; "missing" is never created
NOT_ZARR = ("missing", "npy", "json", "html", "text", "empty-folder")
CLI_ERROR = re.compile(r"^daskdict( [a-z]+)?: error: \S")

# a fragment a message must contain: a string, or a tuple of strings any one of which will do
Fragment = str | tuple[str, ...]


# --------------------------------------------------------------------------- disk state


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` by relative path: a file's sha256, ``"dir"`` for a folder.

    Folders count too, so that an empty output folder left behind is seen.
    """
    root = Path(root)
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    """What changed between two snapshots, in words (empty when nothing did)."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"{what}: {names[:6]}" for what, names in
             (("created", added), ("removed", removed), ("modified", changed)) if names]
    return "; ".join(parts)


# --------------------------------------------------------------------------- objects


def planted_rows(n: int = N, seed: int = 0) -> np.ndarray:
    """Planted float32 data of shape (n, D)."""
    return make_planted(n, D, K, S, random_state=seed).data.astype(np.float32)


def build_golden(root: Path) -> dict[str, Path]:
    """One tiny object of every kind daskdict writes, under ``root``; their paths by name."""
    root.mkdir(parents=True, exist_ok=True)
    data = planted_rows()
    captions = [f"a photo of a thing {i % 7} near a thing {i % 5}" for i in range(N)]
    store = root / "store.zarr"
    daskdict.create_store(store, {"final": data, "hidden_00": data[:, ::-1] * 0.5,
                                  "hidden_01": data * 2.0}, captions=captions, chunk_rows=CHUNK)
    model = daskdict.fit(store, n_atoms=K, n_nonzero=S, n_iter=1, random_state=0,
                         client="sync", verbose=False)
    dictionary = model.save(root / "dictionary.zarr")
    codes = model.encode(store, out=root / "codes.zarr", client="sync")
    explanations = daskdict.explain(codes, store).save(root / "explanations.json")
    left = sp.random(N, 12, density=0.2, random_state=1, format="csr")
    right = sp.random(N, 10, density=0.2, random_state=2, format="csr")
    graph = daskdict.ConceptGraph(n_models=2, min_positives=2, random_state=0,
                                  client="sync").fit([left, right]).save(root / "graph.zarr")
    report = root / "report.html"
    write_report(report, daskdict.Explanations.load(explanations), codes=codes)
    # a plan's numbers do not matter here, only that a saved plan is on disk
    plan = daskdict.Plan(n_samples=N, n_features=D, n_atoms=K, n_nonzero=S, n_workers=1,
                         threads_per_worker=1, chunk_rows=CHUNK, seconds_per_iteration=1.0,
                         memory_per_worker_bytes=1, arrays_per_worker_bytes={},
                         calibration={}).save(root / "plan.json")
    images = root / "images"
    images.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(images / f"img{i}.png")
    return {"store": store, "dictionary": dictionary, "codes": root / "codes.zarr",
            "explanations": explanations, "graph": graph, "report": report, "plan": plan,
            "images": images}


@dataclass
class Objects:
    """Copies of the golden objects in one test's folder, and makers of bad paths beside them.

    Everything a case reads or writes lies under ``root``, so that one snapshot of ``root``
    before and after the call shows any change to an input and any file created.
    """

    root: Path
    paths: dict[str, Path]
    _made: dict[str, Path] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Path:
        paths = self.__dict__.get("paths", {})
        if name in paths:
            return paths[name]
        raise AttributeError(name)

    def bad(self, case: str) -> Path:
        """A path that is not a daskdict object: one of :data:`NOT_ZARR` or ``bare-array``."""
        if case in self._made:
            return self._made[case]
        folder = self.root / "bad"
        folder.mkdir(exist_ok=True)
        if case == "missing":
            path = folder / "missing.zarr"
        elif case == "npy":
            path = folder / "embeddings.npy"
            np.save(path, planted_rows(20))
        elif case == "json":
            path = folder / "settings.json"
            path.write_text('{"hello": [1, 2, 3]}\n')
        elif case == "html":
            path = folder / "page.html"
            path.write_text("<!DOCTYPE html><html><body>not daskdict</body></html>\n")
        elif case == "text":
            path = folder / "notes.txt"
            path.write_text("just some text\n")
        elif case == "empty-folder":
            path = folder / "empty.zarr"
            path.mkdir()
        elif case == "bare-array":
            path = folder / "array.zarr"
            zarr.create_array(path, shape=(N, D), dtype=np.float32,
                              chunks=(CHUNK, D))[...] = planted_rows()
        else:
            raise ValueError(case)
        self._made[case] = path
        return path

    def model(self) -> daskdict.Dictionary:
        return daskdict.Dictionary.load(self.dictionary)

    def codes_object(self) -> daskdict.Codes:
        return daskdict.Codes.load(self.codes).compute()

    def explanations_object(self) -> daskdict.Explanations:
        return daskdict.Explanations.load(self.explanations)

    def graph_object(self) -> daskdict.ConceptGraph:
        return daskdict.ConceptGraph.load(self.graph)

    def plan_object(self) -> daskdict.Plan:
        return daskdict.load(self.plan)


def copy_objects(golden: dict[str, Path], root: Path) -> Objects:
    """Fresh copies of the golden objects under ``root / "in"``."""
    folder = root / "in"
    folder.mkdir(parents=True)
    paths = {}
    for name, source in golden.items():
        target = folder / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        paths[name] = target
    return Objects(root=root, paths=paths)


# --------------------------------------------------------------------------- checks


def check(condition: Any, message: str) -> None:
    """Fail the test with ``message`` alone: the matrix has many cases, and a refusal that went
    wrong is described fully by what was raised, printed and changed on disk."""
    if not condition:
        pytest.fail(message, pytrace=False)


@contextlib.contextmanager
def example(**values: Any) -> Iterator[None]:
    """Add a property-based example's values to the message of a check that fails inside."""
    failed = None
    try:
        yield
    except pytest.fail.Exception as exc:
        failed = exc.msg
    if failed is not None:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        pytest.fail(f"{failed} [example: {shown}]", pytrace=False)


def _names_all(message: str, fragments: Iterable[Fragment]) -> None:
    for fragment in fragments:
        options = (fragment,) if isinstance(fragment, str) else tuple(fragment)
        check(any(option in message for option in options),
              f"none of {options} in the message: {message!r}")


def _close(result: Any) -> None:
    """Close what a call that should have been refused started (a cluster, a client)."""
    close = getattr(result, "close", None)
    if callable(close):
        close()


def api_refused(call: Callable[[], Any], fragments: Sequence[Fragment], *, root: Path,
                error: type[BaseException] = DaskdictError,
                absent: Iterable[Path] = ()) -> BaseException:
    """Call ``call``; check a clean refusal (see the module docstring) and return the error.

    Parameters
    ----------
    call : callable
        The bad call.
    fragments : sequence of str or tuple of str
        What the message must name (a tuple: any one of its strings).
    root : Path
        Folder of every input and output of the call: nothing under it may change.
    error : exception type, default=DaskdictError
        A more specific class the error must be (always also a DaskdictError).
    absent : iterable of Path
        Outputs outside ``root`` that must not exist afterwards.
    """
    before = snapshot(root)
    raised: BaseException | None = None
    try:
        result = call()
    except Exception as exc:
        raised = exc
    changed = diff(before, snapshot(root))
    disk = f"; disk changes: {changed or 'none'}"
    if raised is None:
        _close(result)
        pytest.fail(f"not refused: returned {type(result).__name__}{disk}", pytrace=False)
    message = str(raised)
    what = f"{type(raised).__module__}.{type(raised).__name__}: {message}"
    check(isinstance(raised, DaskdictError), f"not a DaskdictError: {what}{disk}")
    check(isinstance(raised, error), f"not {error.__name__}: {what}{disk}")
    _names_all(message, fragments)
    check("\n" not in message.strip(), f"a multi-line message: {message!r}")
    check(not changed, f"refused ({what}) but the disk changed: {changed}")
    for path in absent:
        check(not Path(path).exists(), f"refused ({what}) but {path} was created")
    return raised


def run_cli(argv: Sequence[Any]) -> int:
    """``daskdict.cli.main`` in this process; argparse's exit becomes its code."""
    try:
        return cli_main([str(arg) for arg in argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def cli_refused(capsys: pytest.CaptureFixture, argv: Sequence[Any],
                fragments: Sequence[Fragment], *, root: Path,
                absent: Iterable[Path] = ()) -> str:
    """Run the command in process; check exit code 2, one ``daskdict: error:`` line on stderr
    naming every fragment, no traceback, nothing on stdout, and the disk unchanged."""
    before = snapshot(root)
    capsys.readouterr()
    escaped: Exception | None = None
    try:
        code = run_cli(argv)
    except Exception as exc:  # main let it through: a user would see a traceback
        escaped = exc
    out, err = capsys.readouterr()
    if escaped is not None:
        pytest.fail(f"a traceback: {type(escaped).__module__}.{type(escaped).__name__}: "
                    f"{escaped}; disk changes: {diff(before, snapshot(root)) or 'none'}",
                    pytrace=False)
    changed = diff(before, snapshot(root))
    shown = f"stderr {err[-300:]!r}; disk changes: {changed or 'none'}"
    check(code == 2, f"exit code {code}, not 2; {shown}")
    check("Traceback" not in err, f"a traceback on stderr: {shown}")
    lines = [line for line in err.splitlines() if line.strip()]
    check(len(lines) == 1, f"not one line on stderr: {shown}")
    check(CLI_ERROR.match(lines[0]), f"not a 'daskdict: error:' line: {shown}")
    _names_all(lines[0], fragments)
    check(out == "", f"something on stdout: {out!r}")
    check(not changed, f"refused ({lines[0]}) but the disk changed: {changed}")
    for path in absent:
        check(not Path(path).exists(), f"refused ({lines[0]}) but {path} was created")
    return lines[0]
