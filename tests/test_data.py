"""nnx.data: TensorDataset and DataLoader (batching, shuffling, devices, GPU prefetch).

The tests of what a loader hands out run on every device (the ``device`` fixture: NumPy, and
CuPy where a GPU answers); the prefetch path is also driven on the CPU by a simulated CuPy."""
import contextlib
import sys
import types

import numpy as np
import pytest

import nnx
from nnx import data
from nnx.data import DataLoader, Dataset, TensorDataset


def _xy(n=10, features=3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    y = np.arange(n, dtype=np.int64)
    return x, y


def _labels(loader):
    """The label column of one epoch, batch by batch, as host arrays."""
    return [yb.numpy() for _, yb in loader]


# -------------------------------------------------------------------------- TensorDataset
def test_tensor_dataset_indexing():
    x, y = _xy(5)
    ds = TensorDataset(x, y)
    assert len(ds) == 5
    xi, yi = ds[2]
    np.testing.assert_array_equal(xi, x[2])
    assert yi == 2
    xb, yb = ds[np.array([4, 0])]
    np.testing.assert_array_equal(xb, x[[4, 0]])
    np.testing.assert_array_equal(yb, [4, 0])
    assert "float32[5, 3]" in repr(ds) and "int64[5]" in repr(ds)


def test_tensor_dataset_size_mismatch_names_sizes():
    with pytest.raises(ValueError, match="same first dimension.*5, 4"):
        TensorDataset(np.zeros((5, 2)), np.zeros(4))


def test_tensor_dataset_needs_arrays():
    with pytest.raises(ValueError, match="at least one array"):
        TensorDataset()
    with pytest.raises(ValueError, match="scalar"):
        TensorDataset(np.float32(3.0))


def test_tensor_dataset_accepts_nnx_tensors_and_lists():
    x, y = _xy(4)
    ds = TensorDataset(nnx.tensor(x), [0, 1, 2, 3])
    assert all(isinstance(a, np.ndarray) for a in ds.arrays)
    np.testing.assert_array_equal(ds.arrays[0], x)
    assert ds.arrays[0].dtype == np.float32


# ------------------------------------------------------------------------- construction
@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "4", None])
def test_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_xy(), batch_size=bs)


def test_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        DataLoader((np.zeros((0, 3), np.float32), np.zeros(0, np.int64)))


def test_len():
    xy = _xy(10)
    assert len(DataLoader(xy, batch_size=3)) == 4
    assert len(DataLoader(xy, batch_size=3, drop_last=True)) == 3
    assert len(DataLoader(xy, batch_size=5, drop_last=True)) == 2
    assert len(DataLoader(xy, batch_size=32)) == 1
    assert len(DataLoader(xy, batch_size=32, drop_last=True)) == 0
    assert len(DataLoader(xy)) == 1  # default batch_size=32


# ----------------------------------------------------------------------------- batching
def _device_name(device):
    return nnx.ones(1, device=device).device  # "cuda" -> "cuda:0"


@pytest.mark.parametrize("how", ["default-device", "device-argument"])
def test_batches_in_order_with_dtypes_and_device(device, how):
    x, y = _xy(10)
    if how == "default-device":
        nnx.set_device(device)
        loader = DataLoader((x, y), batch_size=4)
    else:  # the default stays the CPU: the argument alone decides
        loader = DataLoader((x, y), batch_size=4, device=device)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    for xb, yb in batches:
        assert isinstance(xb, nnx.Tensor) and isinstance(yb, nnx.Tensor)
        assert xb.numpy().dtype == np.float32
        assert yb.numpy().dtype == np.int64  # labels stay int64, never cast to float
        assert xb.device == yb.device == _device_name(device)
        assert xb.backend.is_array(xb.data) and yb.backend.is_array(yb.data)
        assert xb.dtype == np.float32 and yb.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y)


def test_drop_last():
    loader = DataLoader(_xy(10), batch_size=4, drop_last=True)
    labels = _labels(loader)
    assert [len(b) for b in labels] == [4, 4]
    np.testing.assert_array_equal(np.concatenate(labels), np.arange(8))


def test_dtype_rule_matches_nnx_tensor(device):
    # float64 becomes the default dtype, as in nnx.tensor; everything else is kept.
    arrays = (np.ones((6, 2), np.float64), np.ones((6, 1), np.float16),
              np.ones(6, np.int32), np.ones(6, np.uint8), np.ones(6, bool))
    batch = next(iter(DataLoader(arrays, batch_size=4, device=device)))
    got = [b.numpy().dtype for b in batch]
    assert got == [nnx.tensor(a, device=device).dtype for a in arrays]
    assert all(b.device == _device_name(device) for b in batch)
    assert got == [np.float32, np.float16, np.int32, np.uint8, np.bool_]
    assert batch[1].shape == (4, 1)


def test_accepts_dataset_list_and_single_array():
    x, y = _xy(6)
    for source in (TensorDataset(x, y), [x, y], (x, y)):
        assert [len(b) for b in _labels(DataLoader(source, batch_size=4))] == [4, 2]
    batches = list(DataLoader(x, batch_size=4))
    assert all(isinstance(b, tuple) and len(b) == 1 for b in batches)
    np.testing.assert_array_equal(batches[1][0].numpy(), x[4:])


def test_accepts_nnx_tensor_arrays():
    x, y = _xy(6)
    (xb, yb), _ = DataLoader((nnx.tensor(x), nnx.tensor(y, dtype=np.int64)), batch_size=4)
    np.testing.assert_array_equal(xb.numpy(), x[:4])
    assert yb.numpy().dtype == np.int64


def test_batches_do_not_alias_the_dataset(device):
    x, y = _xy(4)
    xb, _ = next(iter(DataLoader((x, y), batch_size=4, device=device)))
    assert not np.shares_memory(np.asarray(nnx.tensor(x).numpy()), xb.numpy())
    if isinstance(xb.data, np.ndarray):
        assert not np.shares_memory(xb.data, x)
    xb.data[...] = -1  # writing into a batch (on any device) leaves the source as it was
    np.testing.assert_array_equal(x, _xy(4)[0])


def test_device_argument(device):
    x, y = _xy(4)
    xb, _ = next(iter(DataLoader((x, y), device="cpu")))
    assert xb.device == "cpu"
    xb, yb = next(iter(DataLoader((x, y), device=device)))
    assert xb.device == yb.device == nnx.tensor(x, device=device).device
    xb, _ = next(iter(DataLoader((x, y), device="auto")))
    assert xb.device == nnx.tensor(x, device="auto").device  # "auto" resolved, not kept
    if not nnx.cuda_available():
        loader = DataLoader((x, y), device="cuda")
        with pytest.raises(nnx.DeviceError, match="CUDA"):
            iter(loader)


class _CountingArray(np.ndarray):
    calls = 0

    def __getitem__(self, index):
        type(self).calls += 1
        return np.asarray(super().__getitem__(index))


def test_one_fancy_index_per_array_per_batch():
    x, y = _xy(100)
    ds = TensorDataset(x, y)
    ds.arrays = tuple(a.view(_CountingArray) for a in ds.arrays)
    _CountingArray.calls = 0
    loader = DataLoader(ds, batch_size=10, shuffle=True, seed=0, device="cpu")
    assert len(list(loader)) == 10
    assert _CountingArray.calls == 2 * 10  # two arrays, ten batches: never per sample


class _SquaresDataset(Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return np.array([i, i * i], np.float32), np.int64(i % 2)


def test_generic_dataset_is_collated(device):
    batches = list(DataLoader(_SquaresDataset(), batch_size=3, device=device))
    assert all(f.device == _device_name(device) for b in batches for f in b)
    assert [b[0].shape for b in batches] == [(3, 2), (3, 2), (1, 2)]
    np.testing.assert_array_equal(batches[1][0].numpy(), [[3, 9], [4, 16], [5, 25]])
    assert batches[0][1].numpy().dtype == np.int64


# ---------------------------------------------------------------------------- shuffling
def test_shuffle_each_epoch_sees_every_sample_once():
    loader = DataLoader(_xy(103), batch_size=10, shuffle=True, seed=0)
    epochs = [np.concatenate(_labels(loader)) for _ in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(103))
    assert not np.array_equal(epochs[0], np.arange(103))
    assert not np.array_equal(epochs[0], epochs[1])  # a new permutation each epoch
    assert not np.array_equal(epochs[1], epochs[2])


def test_shuffle_drop_last_distinct_samples():
    loader = DataLoader(_xy(103), batch_size=10, shuffle=True, drop_last=True, seed=1)
    order = np.concatenate(_labels(loader))
    assert len(order) == 100 and len(np.unique(order)) == 100


def test_shuffle_seed_reproducible():
    xy = _xy(50)
    a = DataLoader(xy, batch_size=8, shuffle=True, seed=42)
    b = DataLoader(xy, batch_size=8, shuffle=True, seed=42)
    c = DataLoader(xy, batch_size=8, shuffle=True, seed=43)
    for _ in range(2):  # the sequence of epochs repeats, not just the first one
        la, lb, lc = (np.concatenate(_labels(loader)) for loader in (a, b, c))
        np.testing.assert_array_equal(la, lb)
        assert not np.array_equal(la, lc)


def test_shuffle_keeps_rows_aligned():
    x, y = _xy(30)
    for xb, yb in DataLoader((x, y), batch_size=7, shuffle=True, seed=0):
        np.testing.assert_array_equal(xb.numpy(), x[yb.numpy()])


def test_shuffle_without_seed_follows_manual_seed():
    xy = _xy(40)
    loader = DataLoader(xy, batch_size=8, shuffle=True)
    nnx.manual_seed(123)
    first = [np.concatenate(_labels(loader)) for _ in range(2)]
    nnx.manual_seed(123)
    again = [np.concatenate(_labels(loader)) for _ in range(2)]
    for u, v in zip(first, again):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(np.sort(first[0]), np.arange(40))


def test_no_shuffle_is_deterministic():
    loader = DataLoader(_xy(9), batch_size=4)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate(_labels(loader)), np.arange(9))


# ------------------------------------------------------------- GPU prefetch, simulated
class _FakeCuda:
    """Just enough of CuPy to drive the prefetch path on a CPU, adversarially.

    A queued copy runs as late as the host allows: only when its event is synchronized on
    the host (or the loader ends), and it reads its pinned source only then. A compute-stream
    ``wait_event`` runs nothing on the host, as on a GPU; it only marks the copy as ordered
    before later kernels. Device arrays start as garbage (123). So a loader that refilled a pinned buffer
    before its copy ended, or handed out a batch the compute stream had not waited for, gives
    wrong batches or fails the check in ``to_tensor``.
    """

    def __init__(self):
        self.created = []  # every device array, in allocation order
        fake = self

        class Job:
            def __init__(self, dst, src):
                self.dst, self.src, self.done, self.ordered = dst, src, False, False

            def __call__(self):
                if not self.done:
                    self.dst.data[...] = self.src  # reads the pinned buffer now
                    self.done = True

        class Event:
            def __init__(self, jobs):
                self.jobs = jobs

            def synchronize(self):
                for job in self.jobs:
                    job()

        class Stream:
            def __init__(self, non_blocking=False):
                self.queue = []

            def record(self):
                return Event(list(self.queue))

            def wait_event(self, event):
                for job in event.jobs:
                    job.ordered = True

        class DeviceArray:
            def __init__(self, shape, dtype):
                self.data = np.full(shape, 123, dtype=dtype)  # garbage
                self.shape, self.dtype = self.data.shape, self.data.dtype
                self.jobs = []
                fake.created.append(self)

            def set(self, host, stream=None):
                assert stream is not None, "the copy must go on the side stream"
                self.jobs.append(Job(self, host))
                stream.queue.append(self.jobs[-1])

        compute = Stream()
        self.cupy = types.SimpleNamespace(
            empty=DeviceArray,
            cuda=types.SimpleNamespace(Stream=Stream, get_current_stream=lambda: compute))
        self.cupyx = types.SimpleNamespace(
            empty_pinned=lambda shape, dtype: np.full(shape, 77).astype(dtype))
        rng = np.random.default_rng(0)
        self.backend = types.SimpleNamespace(
            name="cupy", use=contextlib.nullcontext, xp=self.cupy, cupyx=self.cupyx,
            permutation=lambda n: rng.permutation(n).astype(np.int64))

    @staticmethod
    def to_tensor(array, device):
        assert device == "cuda:0"
        assert array.jobs and all(job.ordered for job in array.jobs), \
            "batch handed out before the compute stream waited for its copy"
        return array


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = _FakeCuda()
    monkeypatch.setitem(sys.modules, "cupy", fake.cupy)
    monkeypatch.setitem(sys.modules, "cupyx", fake.cupyx)
    monkeypatch.setattr(data, "_device_backend", lambda device: (device, fake.backend))
    monkeypatch.setattr(data, "_to_tensor", fake.to_tensor)
    return fake


def _host_batches(batches):
    """Device batches read after the epoch, when every copy has run."""
    return [tuple(a.data for a in batch) for batch in batches]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_prefetch_path_yields_the_same_batches(fake_cuda, shuffle, drop_last):
    x, y = _xy(23)
    loader = DataLoader((x, y), batch_size=5, shuffle=shuffle, drop_last=drop_last, seed=7,
                        device="cuda:0")
    order = np.random.default_rng(7).permutation(23) if shuffle else np.arange(23)
    stops = range(5, 21 if drop_last else 26, 5)
    reference = [(x[order[s - 5:s]], y[order[s - 5:s]]) for s in stops]
    got = _host_batches(list(loader))
    assert len(got) == len(loader) == len(reference)
    for (xb, yb), (xr, yr) in zip(got, reference):
        np.testing.assert_array_equal(xb, xr)
        np.testing.assert_array_equal(yb, yr)
        assert xb.dtype == np.float32 and yb.dtype == np.int64


def test_prefetch_copies_one_batch_ahead(fake_cuda):
    loader = DataLoader(_xy(20), batch_size=5, device="cuda:0")
    seen = []
    for k, _ in enumerate(loader):
        seen.append(len(fake_cuda.created))
    # two arrays per batch; while batch k is in use, batch k+1 is already on its way
    assert seen == [4, 6, 8, 8]


def test_prefetch_generic_dataset(fake_cuda):
    batches = _host_batches(DataLoader(_SquaresDataset(), batch_size=3, device="cuda:0"))
    np.testing.assert_array_equal(batches[2][0], [[6, 36]])
    np.testing.assert_array_equal(batches[1][1], [1, 0, 1])


def test_prefetch_casts_float64_on_the_host(fake_cuda):
    x = np.linspace(0, 1, 14, dtype=np.float64).reshape(7, 2)
    y = np.arange(7, dtype=np.int64)
    batches = _host_batches(DataLoader((x, y), batch_size=3, shuffle=True, seed=0,
                                       device="cuda:0"))
    assert all(xb.dtype == np.float32 and yb.dtype == np.int64 for xb, yb in batches)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, x[yb].astype(np.float32))


def test_prefetch_early_exit_finishes_copies(fake_cuda):
    it = iter(DataLoader(_xy(20), batch_size=5, device="cuda:0"))
    next(it)
    it.close()  # the pending copy of batch 1 must end before its pinned buffer is freed
    assert all(a.jobs[0].done for a in fake_cuda.created)


# ----------------------------------------------------------------------- every real device
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_on_each_device_matches_the_cpu(device, drop_last):
    """The loader's batches on ``device`` (on a GPU through the real prefetch path, with a label
    array given as a device tensor) are the CPU loader's, epoch after epoch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 17)).astype(np.float32)
    y = rng.integers(0, 10, 1000).astype(np.int64)
    dev = DataLoader((x, nnx.tensor(y, device=device)), batch_size=64, shuffle=True, seed=3,
                     drop_last=drop_last, device=device)
    cpu = DataLoader((x, y), batch_size=64, shuffle=True, seed=3, drop_last=drop_last,
                     device="cpu")
    for _ in range(2):
        n = 0
        for (xg, yg), (xc, yc) in zip(dev, cpu):
            assert xg.device == _device_name(device) and xg.backend.is_array(xg.data)
            xg.data *= 2  # compute on the current stream while the next copy is in flight
            np.testing.assert_array_equal(xg.numpy(), 2 * xc.numpy())
            np.testing.assert_array_equal(yg.numpy(), yc.numpy())
            assert yg.numpy().dtype == np.int64
            n += 1
        assert n == len(dev) == len(cpu) == (15 if drop_last else 16)
