"""fit(device="cuda"): the device coder in the fit, refused where it cannot run, and the same
dictionary as the numba coders within float32 rounding. The suite has no GPU: the device
coder runs on PyTorch's CPU device, with "cuda" mapped there."""

import numpy as np
import pytest

import daskdict
from daskdict.datasets.planted import make_planted
from daskdict.errors import InvalidInputError
from daskdict.learn import device_coder, devices
from daskdict.learn import params as fit_params

torch = pytest.importorskip("torch")


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """'cuda' (and 'cuda:N') resolved to PyTorch's CPU device, as if a GPU were there."""
    monkeypatch.setattr(device_coder, "resolve_device", lambda device, torch: torch.device("cpu"))


@pytest.fixture(scope="module")
def planted():
    return make_planted(3000, 24, 48, 3, 30.0, random_state=1, dtype=np.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_gpu_is_refused_naming_what_torch_sees(planted):
    with pytest.raises(InvalidInputError, match=r"sees no CUDA device"):
        daskdict.fit(planted.data, 48, 3, 1, device="cuda", verbose=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(device="mps"), "Expected device 'cpu'"),
    (dict(device=0), "Expected device 'cpu'"),
    (dict(device="cuda", coder="mp"), "coder='mp'"),
    (dict(device="cuda", dtype="float64"), "dtype='float64'"),
    (dict(device="cuda", correlation_dtype="bfloat16"), "correlation_dtype='bfloat16'"),
])
def test_settings_the_device_coder_cannot_serve_are_refused(planted, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        daskdict.fit(planted.data, 48, 3, 1, verbose=False, **kwargs)


@pytest.mark.parametrize("positive", [False, True])
def test_a_device_fit_learns_the_numba_fits_dictionary(planted, cuda_on_cpu, positive):
    data = np.abs(planted.data) if positive else planted.data
    kwargs = dict(n_atoms=48, n_nonzero=3, n_iter=4, random_state=0, verbose=False,
                  positive=positive, client="threads")
    on_device = daskdict.fit(data, device="cuda", **kwargs)
    numba = daskdict.fit(data, **kwargs)
    assert on_device.params["device"] == "cuda" and numba.params["device"] == "cpu"
    np.testing.assert_allclose(on_device.atoms, numba.atoms, atol=2e-4)
    errors = [[h["relative_error"] for h in m.history] for m in (on_device, numba)]
    np.testing.assert_allclose(errors[0], errors[1], rtol=1e-4)


def test_levels_code_on_the_device(planted, cuda_on_cpu):
    kwargs = dict(n_atoms=[8, 32], n_nonzero=[1, 2], n_iter=3, random_state=0, verbose=False,
                  client="threads")
    on_device = daskdict.fit(planted.data, device="cuda", **kwargs)
    numba = daskdict.fit(planted.data, **kwargs)
    np.testing.assert_allclose(on_device.atoms, numba.atoms, atol=2e-4)


def test_a_checkpoint_from_the_device_resumes_on_the_cpu(planted, cuda_on_cpu, tmp_path):
    checkpoint = tmp_path / "state.zarr"
    kwargs = dict(n_atoms=48, n_nonzero=3, random_state=0, verbose=False, client="threads",
                  checkpoint=checkpoint)
    first = daskdict.fit(planted.data, n_iter=2, device="cuda", **kwargs)
    resumed = daskdict.fit(planted.data, n_iter=3, **kwargs)
    assert resumed.history[:2] == first.history and len(resumed.history) == 3


def test_a_local_cluster_gets_one_process_per_gpu(monkeypatch):
    monkeypatch.setattr(device_coder, "available_devices", lambda: ["cuda:0", "cuda:1", "cpu"])
    processes, threads = devices.cluster_shape("cuda")
    assert processes == 2 and threads >= 1
    assert devices.cluster_shape("cpu")[0] == 1
    assert fit_params.coder_key("omp", True, "float32", "cuda:1") == "omp-positive@cuda:1"


def test_each_worker_process_codes_on_its_own_gpu(monkeypatch):
    """Pinned by its number, a worker's "cuda" is its own GPU in every thread (torch's current
    device is per thread, so the choice is kept by the process)."""
    from types import SimpleNamespace

    fake_cuda = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
    monkeypatch.setattr(device_coder, "require_torch", lambda: SimpleNamespace(cuda=fake_cuda))
    monkeypatch.setattr(devices, "_WORKER_GPU", [])
    assert devices.worker_device("cuda") == "cuda"
    assert devices.pin_worker_device(SimpleNamespace(name=3)) == "cuda:1"
    assert devices.worker_device("cuda") == "cuda:1"
    assert devices.worker_device("cuda:0") == "cuda:0"
    assert devices.pin_worker_device(SimpleNamespace(name="SLURMCluster-0")) is None


def test_a_worker_without_the_gpu_is_named(monkeypatch):
    from types import SimpleNamespace

    calls = []

    def run(function, *args):
        calls.append(function.__name__)
        return {"tcp://b:1": None, "tcp://a:1": "it sees no CUDA device"}

    rt = SimpleNamespace(client=SimpleNamespace(run=run))
    with pytest.raises(InvalidInputError, match=r"worker tcp://a:1 cannot code on 'cuda'"):
        devices.prepare_workers(rt, "cuda")
    assert calls == ["device_problem"]
    devices.prepare_workers(rt, "cpu")  # nothing asked of the workers
    assert calls == ["device_problem"]


def test_auto_correlations_take_float32_on_the_device(cuda_on_cpu, monkeypatch):
    monkeypatch.setattr(fit_params, "resolve_correlations",
                        lambda *a: ("bfloat16", "bfloat16 (auto: amx_bf16, torch)"))
    params = fit_params.validate_params(8, 2, 1, "omp", 0.0, "auto", None, True, True, "data",
                                        "float32", n_samples=100, n_features=10,
                                        correlation_dtype="auto", device="cuda")
    assert params.correlation_dtype == "float32" and params.coder_key == "omp@cuda"
    assert "device coder" in params.correlations
