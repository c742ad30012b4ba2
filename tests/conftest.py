import time
from pathlib import Path

import numpy as np
import pytest
import zarr


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def unit_rows(array):
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def dense_codes(indices, values, n_atoms):
    """Reference scatter of fixed-width codes into a dense (n_samples, n_atoms) matrix."""
    out = np.zeros((indices.shape[0], n_atoms))
    for i, (idx, val) in enumerate(zip(indices, values, strict=True)):
        keep = idx >= 0
        out[i, idx[keep]] = val[keep]
    return out


def checkpoint_history(path: Path) -> list[dict] | None:
    """The history stored in a checkpoint, read with zarr directly (None if there is none)."""
    try:
        group = zarr.open_group(path, mode="r")
        attrs = group.attrs
        meta = attrs["daskdict"] if "daskdict" in attrs else attrs["daskdict_checkpoint"]
        return list(meta["history"])
    except Exception:  # not there yet, or being swapped in
        return None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(autouse=True)
def _clusters_are_marked(request, monkeypatch):
    """A test that starts a LocalCluster must say so (``@pytest.mark.cluster``), so that
    ``-m 'not cluster'`` really leaves out every test that starts worker processes."""
    if request.node.get_closest_marker("cluster") is not None:
        yield
        return
    import distributed

    started = []
    real_init = distributed.LocalCluster.__init__

    def recording_init(self, *args, **kwargs):
        started.append(True)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(distributed.LocalCluster, "__init__", recording_init)
    yield
    if started:
        pytest.fail(f"{request.node.nodeid} starts a LocalCluster: mark it @pytest.mark.cluster")


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for name, node in group.members():
        if isinstance(node, zarr.Group):
            out.update(_arrays(node, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = np.asarray(node[...])
    return out


def assert_same_store(a, b) -> None:
    """Two embedding stores hold the same arrays, bit for bit, and the same header."""
    arrays_a, arrays_b = _arrays(a.group), _arrays(b.group)
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, values in arrays_a.items():
        np.testing.assert_array_equal(values, arrays_b[name], err_msg=name)
    assert a.attrs == b.attrs
