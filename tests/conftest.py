"""Shared fixtures: every backend test runs on NumPy and, where a GPU answers, on CuPy."""
import numpy as np
import pytest

from nnx import backends
import nnx


def _cuda_reason():
    ok, why = backends.cuda_status()
    return None if ok else why


_CUDA_SKIP = _cuda_reason()

DEVICES = [
    pytest.param("cpu", id="numpy"),
    pytest.param("cuda", id="cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(_CUDA_SKIP is not None, reason=f"no usable CUDA device: {_CUDA_SKIP}"),
    ]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device string of each available backend ("cpu", "cuda")."""
    return request.param


@pytest.fixture
def backend(device):
    return backends.get_backend(device)


TOLERANCES = {np.float16: 5e-3, np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def _reset_nnx_state():
    """Each test starts on the CPU with float32 defaults, grad mode on and anomaly mode off."""
    nnx.set_default_dtype("float32")
    nnx.set_device("cpu")
    nnx.set_detect_anomaly(False)
    yield
    nnx.set_default_dtype("float32")
    nnx.set_device("cpu")
    nnx.set_detect_anomaly(False)


@pytest.fixture
def strict():
    """The strict backend (device-like NumPy arrays that count host syncs) as the default
    device, its sync counter reset (yields the strict_backend module); the CPU again afterwards."""
    from nnx.backends import strict_backend as sb

    backends.register_strict()
    nnx.set_device("strict")
    sb.reset_sync_count()
    yield sb
    nnx.set_device("cpu")
