"""Daskdict's own errors raised in a worker reach the user once: no worker traceback."""

import logging
import subprocess
import sys
import textwrap

import pytest

from daskdict.compute.logs import DaskdictErrorFilter, install_filter


def _compute_failed(exception_text: str) -> logging.LogRecord:
    """The record a worker logs for a task that raised (as distributed's worker writes it)."""
    return logging.LogRecord(
        "distributed.worker", logging.ERROR, __file__, 1,
        "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\nTraceback: %r\n",
        ("key", "executing", "<Task>", exception_text, '  File "x.py", line 1\n'), None)


def test_filter_drops_daskdict_errors_only():
    quiet = DaskdictErrorFilter()
    assert not quiet.filter(_compute_failed("CorruptChunkError('Could not read rows 0–9')"))
    assert not quiet.filter(_compute_failed("InvalidInputError('NaN rows')"))
    assert quiet.filter(_compute_failed("ValueError('a bug')"))
    assert quiet.filter(_compute_failed("CorruptChunkErrorish('x')"))
    try:
        from daskdict.errors import StoreNotFoundError
        raise StoreNotFoundError("gone")
    except StoreNotFoundError:
        record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, "failed",
                                   (), sys.exc_info())
    assert not quiet.filter(record)
    assert quiet.filter(logging.LogRecord("distributed.worker", logging.INFO, __file__, 1,
                                          "Starting worker", (), None))
    install_filter()
    install_filter()
    filters = logging.getLogger("distributed.worker").filters
    assert sum(isinstance(f, DaskdictErrorFilter) for f in filters) == 1


SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    from distributed import Client

    import daskdict
    from daskdict.datasets.planted import make_planted

    def bug():
        raise ValueError("a bug in a task")

    if __name__ == "__main__":
        tmp = Path(sys.argv[1])
        data = make_planted(2000, 16, 32, 3, random_state=0).data.astype(np.float32)
        daskdict.create_store(tmp / "s.zarr", {"final": data}, chunk_rows=500)
        chunk = tmp / "s.zarr" / "layers" / "final" / "c" / "2" / "0"  # rows 1000-1499
        raw = chunk.read_bytes()
        chunk.write_bytes(raw[: len(raw) // 2])
        with daskdict.cluster("local", jobs=1) as cluster:
            try:
                daskdict.fit(tmp / "s.zarr", n_atoms=32, n_nonzero=3, n_iter=2,
                             random_state=0, client=cluster, verbose=False)
            except daskdict.CorruptChunkError as exc:
                print("raised:", exc)
            sys.stderr.flush()
            print("---", file=sys.stderr, flush=True)
            with Client(cluster) as client:  # other errors are still logged
                try:
                    client.submit(bug).result()
                except ValueError:
                    pass
""")


@pytest.mark.cluster
@pytest.mark.cluster
def test_corrupt_chunk_on_a_local_cluster_prints_no_worker_traceback(tmp_path):
    script = tmp_path / "fit_damaged.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "raised: Could not read rows 1000–1499" in result.stdout, result.stdout
    during_fit, after = result.stderr.split("---\n", 1)
    assert "CorruptChunkError" not in during_fit, during_fit
    assert "Compute Failed" not in during_fit and "Traceback" not in during_fit, during_fit
    assert "Compute Failed" in after and "a bug in a task" in after, after
