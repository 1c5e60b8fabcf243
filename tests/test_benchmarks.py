"""The benchmark suite itself (benchmarks/): correct, runnable, and cannot rot.

The hand-written NumPy floor must compute the same gradients and updates as nnx and PyTorch on
the same weights (A, B and C at reduced width, SGD and Adam); every workload must build and run
a step for every contender on every backend; the harness, the report and the GPU wrapper must
work.  Timings are never asserted.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nnx import backends
from nnx.benchmarks import contenders as C
from nnx.benchmarks import report, timing
from nnx.benchmarks import workloads as W
from nnx.benchmarks.floor import FloorMLP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_OK, CUDA_WHY = backends.cuda_status()
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[
               pytest.mark.gpu,
               pytest.mark.skipif(not CUDA_OK, reason=f"no usable CUDA device: {CUDA_WHY}")])]

# gradient checks: A and B at full size, C at reduced width (same structure)
GRAD_WORKLOADS = ["A", "B", "C@128", "B-adam", "C-adam@128",
                  "B-adamw", "C-adamw@128", "B-clip", "C-clip@128"]
ALL_WORKLOADS = ["A", "B", "C", "B-adam", "C-adam", "B-adamw", "C-adamw@256", "B-clip",
                 "C-clip@256"]


def _make(name, key, device="cpu", **kw):
    w = W.get(key)
    try:
        return C.make(name, w, W.init_params(w, **kw), W.make_batches(w), device)
    except C.Skip as e:
        pytest.skip(str(e))


def _assert_close(got, want, rtol, what):
    assert set(got) == set(want), what
    for k in want:
        scale = float(np.abs(want[k]).max()) + 1e-12
        err = float(np.abs(got[k] - want[k]).max())
        assert err <= rtol * scale, f"{what} {k}: max error {err:.3g} vs scale {scale:.3g}"


# ---------------------------------------------------------------------------- workloads
def test_workload_definitions():
    a, b, c = W.get("A"), W.get("B"), W.get("C")
    assert (a.sizes, a.batch, a.hidden, a.loss) == ((2, 2, 1), 4, "sigmoid", "bce")
    assert (b.sizes, b.batch, b.loss) == ((784, 256, 256, 10), 128, "ce")
    assert (c.sizes, c.batch) == ((1024, 4096, 4096, 10), 512)
    assert c.flops_per_step == 6 * 512 * (1024 * 4096 + 4096 * 4096 + 4096 * 10)
    assert W.get("wide-mlp") == c and W.get("B-adam").optimizer == "adam"
    assert W.get("C@256").sizes == (256, 256, 256, 10)
    p = W.init_params(b)
    assert list(p) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert p["0.weight"].shape == (256, 784) and p["0.weight"].dtype == np.float32
    with pytest.raises(KeyError):
        W.get("nope")


@pytest.mark.parametrize("key", ["A", "B@64", "C-adam@64", "B-adamw@64", "C-clip@64"])
def test_one_model_description_builds_both_frameworks(key):
    """torch and nnx models, losses and optimizers come from ``Workload.layers()`` and the
    ``build_*`` helpers alone: the same modules in the same order, the same parameter keys and
    shapes as ``init_params``."""
    torch = pytest.importorskip("torch")
    import nnx

    w = W.get(key)
    p = W.init_params(w)
    want = [name for name, _ in w.layers()]
    for fw_nn, fw_optim in ((torch.nn, torch.optim), (nnx.nn, nnx.optim)):
        m = W.build_model(fw_nn, w)
        assert [type(c).__name__ for c in m] == want
        sd = m.state_dict()
        assert list(sd) == w.param_keys() == list(p)
        assert [tuple(v.shape) for v in sd.values()] == [v.shape for v in p.values()]
        assert type(W.build_loss(fw_nn, w)).__name__ == W.LOSSES[w.loss]
        opt = W.build_optimizer(fw_optim, w, m.parameters())
        assert type(opt).__name__ == {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[w.optimizer]
        if w.optimizer == "adamw":
            assert opt.defaults["weight_decay"] == w.weight_decay == 0.01
        if w.clip is not None:
            assert callable(W.clip_fn(fw_nn))
    assert want[-1] == ("Sigmoid" if w.loss == "bce" else "Linear")


# ---------------------------------------------------------------------------- the floor
@pytest.mark.parametrize("key", GRAD_WORKLOADS)
def test_floor_gradients_match_torch(key):
    pytest.importorskip("torch")
    floor, ref = _make("floor", key), _make("torch", key)
    _assert_close(floor.gradients(), ref.gradients(), 1e-4, f"{key} floor vs torch grads")
    assert floor.loss_value() == pytest.approx(ref.loss_value(), rel=1e-5)


@pytest.mark.parametrize("key", GRAD_WORKLOADS)
def test_floor_gradients_match_nnx(key):
    floor, ref = _make("floor", key), _make("nnx", key)
    _assert_close(floor.gradients(), ref.gradients(), 1e-4, f"{key} floor vs nnx grads")
    assert floor.loss_value() == pytest.approx(ref.loss_value(), rel=1e-5)


@pytest.mark.parametrize("key", GRAD_WORKLOADS)
@pytest.mark.parametrize("ref_name", ["nnx", "torch"])
def test_floor_updates_match(key, ref_name):
    """Three full steps (cycling batches) leave the same parameters as nnx / PyTorch."""
    if ref_name == "torch":
        pytest.importorskip("torch")
    floor, ref = _make("floor", key), _make(ref_name, key)
    p0 = floor.state_dict()
    for _ in range(3):
        floor.step()
        ref.step()
    got, want = floor.state_dict(), ref.state_dict()
    # Adam's first steps move every weight by about lr whatever the gradient's size, so compare
    # the change against lr; SGD's change is compared against the weights' own scale
    w = W.get(key)
    for k in want:
        moved = float(np.abs(want[k] - p0[k]).max())
        assert moved > 0, f"{ref_name} did not update {k}"
        tol = (0.05 * w.lr if w.optimizer.startswith("adam")
               else 1e-5 * float(np.abs(want[k]).max()))
        err = float(np.abs(got[k] - want[k]).max())
        assert err <= tol, f"{key} {k}: floor vs {ref_name} after 3 steps: {err:.3g} > {tol:.3g}"


def test_new_workload_definitions():
    """Issue 12: AdamW and clipped workloads; the existing ones unchanged."""
    for k in ("B-adamw", "C-adamw"):
        w, a = W.get(k), W.get(k.replace("adamw", "adam"))
        assert (w.optimizer, w.lr, w.weight_decay) == ("adamw", a.lr, 0.01)
        assert (w.sizes, w.batch) == (a.sizes, a.batch)
    for k in ("B-clip", "C-clip"):
        w, s = W.get(k), W.get(k[0])
        assert (w.clip, w.base, w.optimizer, w.lr, w.sizes, w.batch) == (
            1.0, k[0], s.optimizer, s.lr, s.sizes, s.batch)
        assert W.base_of(w).clip is None and W.base_of(w).key == k[0]
    assert W.get("C-clip").bar_clip_overhead == 1.03
    assert W.base_of(W.get("C-clip@64")).key == "C@64"
    assert W.base_of(W.get("C-clip@64")).sizes == W.get("C@64").sizes
    assert all(W.get(k).clip is None and W.get(k).weight_decay == 0 for k in
               ("A", "B", "C", "B-adam", "C-adam"))


@pytest.mark.parametrize("ref_name", ["nnx", "torch"])
@pytest.mark.parametrize("key,change", [
    ("C-clip@64", {"clip": 0.05}),                 # the scale is < 1: the gradients shrink
    ("B-clip", {"clip": 0.05}),
    ("C-adamw@64", {"weight_decay": 10.0}),        # a decay large enough to see (1% a step)
])
def test_floor_clip_and_decay_take_effect_and_match(key, change, ref_name):
    """At 1.0 the clip does not bind on these batches (norm ~0.4-0.5) and AdamW's 1e-5 decay
    is below the Adam tolerance: here they bind, and the three contenders still agree."""
    if ref_name == "torch":
        pytest.importorskip("torch")
    import dataclasses
    w = dataclasses.replace(W.get(key), **change)
    p, b = W.init_params(w), W.make_batches(w)
    plain = dataclasses.replace(w, clip=None, weight_decay=0.0)
    floor, ref, floor0 = C.make("floor", w, p, b), C.make(ref_name, w, p, b), \
        C.make("floor", plain, p, b)
    for _ in range(3):
        floor.step()
        ref.step()
        floor0.step()
    got, want, off = floor.state_dict(), ref.state_dict(), floor0.state_dict()
    for k in want:
        scale = float(np.abs(want[k] - p[k]).max())
        assert float(np.abs(got[k] - want[k]).max()) <= 1e-3 * scale + 1e-7, k
    assert max(float(np.abs(off[k] - got[k]).max()) for k in got) > 1e-5


def test_floor_sigmoid_bce_saturated_is_finite_and_silent():
    """Huge pre-activations: no overflow warnings (warnings are errors here), PyTorch's values."""
    torch = pytest.importorskip("torch")
    w = W.get("A")
    params = {k: v * 400 for k, v in W.init_params(w).items()}
    floor = FloorMLP(w, params, W.make_batches(w))
    g = floor.gradients()
    assert np.isfinite(floor.loss_value())
    assert all(np.isfinite(v).all() for v in g.values())
    m = W.build_model(torch.nn, w)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    x, y = W.make_batches(w)[0]
    loss = torch.nn.BCELoss()(m(torch.from_numpy(x)), torch.from_numpy(y))
    assert floor.loss_value() == pytest.approx(loss.item(), rel=1e-5)


def test_floor_relu_bit_trick_matches_maximum():
    w = W.get("C@64")
    floor = FloorMLP(w, W.init_params(w), W.make_batches(w))
    x, y = floor.batches[0]
    floor.gradients()
    z0 = x @ floor.W[0].T + floor.b[0]
    np.testing.assert_array_equal(floor.Z[0], np.maximum(z0, 0))


class _FakeCupy:
    """NumPy dressed as CuPy: drives the floor's non-NumPy code path without a GPU."""
    __name__ = "fake_cupy"

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def asnumpy(a):
        return np.array(a)

    class cuda:
        @staticmethod
        def get_current_stream():
            import types
            return types.SimpleNamespace(synchronize=lambda: None)


@pytest.mark.parametrize("key", ["A", "C@64", "C-adam@64", "C-adamw@64", "C-clip@64"])
def test_floor_array_module_path_matches_numpy(key):
    """The floor's CuPy path (Python-float constants, amax, unchunked update) on a fake xp."""
    w = W.get(key)
    p, b = W.init_params(w), W.make_batches(w)
    ref, alt = FloorMLP(w, p, b), FloorMLP(w, p, b, xp=_FakeCupy())
    assert not alt.is_numpy and alt.chunk is None
    _assert_close(alt.gradients(), ref.gradients(), 1e-6, f"{key} fake-cupy grads")
    for _ in range(3):
        ref.step()
        alt.step()
    alt.sync()
    _assert_close(alt.state_dict(), ref.state_dict(), 1e-5, f"{key} fake-cupy steps")


def test_floor_sgd_momentum_matches_torch():
    torch = pytest.importorskip("torch")
    import dataclasses
    w = dataclasses.replace(W.get("B"), momentum=0.9)
    p, b = W.init_params(w), W.make_batches(w)
    floor, ref = C.make("floor", w, p, b), C.make("torch", w, p, b)
    assert isinstance(ref.opt, torch.optim.SGD)
    for _ in range(3):
        floor.step()
        ref.step()
    _assert_close(floor.state_dict(), ref.state_dict(), 1e-5, "momentum SGD")


# ---------------------------------------------------------------------------- every workload
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["floor", "nnx", "torch"])
@pytest.mark.parametrize("key", ALL_WORKLOADS)
def test_workload_builds_and_steps(key, name, device):
    """Full-size workload, one step, on every contender and backend."""
    c = _make(name, key, device)
    c.set_threads(1)
    c.activate()
    before = c.state_dict()
    c.step()
    c.sync()
    assert np.isfinite(c.loss_value())
    after = c.state_dict()
    assert set(after) == set(W.get(key).param_keys())
    assert any(not np.array_equal(before[k], after[k]) for k in after)
    c.close()


@pytest.mark.parametrize("device", DEVICES)
def test_nnx_gradients_match_floor_on_device(device):
    floor, ref = _make("floor", "B"), _make("nnx", "B", device)
    _assert_close(floor.gradients(), ref.gradients(), 1e-4, f"floor vs nnx-{device}")


def test_gemm_contender_runs():
    c = _make("gemm", "C@128")
    c.step()
    c.sync()
    assert c.Z[-1].shape == (64, 10)


def test_skip_reasons():
    with pytest.raises(C.Skip, match=r"\S"):
        if CUDA_OK:
            raise C.Skip("cuda is here: nothing to skip")
        C.make("nnx", W.get("A"), W.init_params(W.get("A")), W.make_batches(W.get("A")), "cuda")
    ok, why = C.cuda_available()
    assert ok == CUDA_OK or not ok
    assert isinstance(why, str) and why


# ---------------------------------------------------------------------------- the harness
def test_load_probe_delta():
    a = (0.0, 0.0, 10.0, 1.0, 5.0)
    b = (1.0, 0.5, 11.5, 1.25, 5.1)  # 1 s wall, we used 0.5 s, machine busy 1.5 s, steal 0.25 s
    d = timing.LoadProbe.delta(a, b)
    assert d["other"] == pytest.approx(1.0) and d["steal"] == pytest.approx(0.25)
    assert d["pressure"] == pytest.approx(0.1)
    s = timing.LoadProbe().sample(0.05)
    assert s["other"] >= 0 and s["wall"] > 0


def test_busy_threshold():
    assert timing.busy_threshold(2, ncpu=2) == pytest.approx(0.25)
    assert timing.busy_threshold(1, ncpu=2) > 0.9


def test_settle_returns_when_idle():
    waited = timing.settle(max_s=0.5)
    assert 0 < waited <= 0.6


def test_interleave_settles_between_thread_pools():
    res = timing.interleave([timing.Entry("a", lambda: None, pool="openblas"),
                             timing.Entry("b", lambda: None, pool="torch")], rounds=2,
                            block_s=0.001, threads=2, max_extra=0, warmup_s=0.001)
    assert res["settle_s"] > 0
    res = timing.interleave([timing.Entry("a", lambda: None, pool="openblas"),
                             timing.Entry("b", lambda: None, pool="torch")], rounds=2,
                            block_s=0.001, threads=1, max_extra=0, warmup_s=0.001)
    assert res["settle_s"] == 0


def test_interleave_pairs_and_summary():
    calls = []

    def slow():
        calls.append("s")
        sum(range(2000))

    def fast():
        calls.append("f")
        sum(range(200))

    res = timing.interleave([timing.Entry("slow", slow), timing.Entry("fast", fast)], rounds=3,
                            block_s=0.002, threads=timing.n_cpus(), max_extra=2,
                            warmup_s=0.01)
    assert set(res["per"]) == {"slow", "fast"} and 3 <= res["rounds"] <= 5
    assert res["ratios"]["slow/fast"]["median"] > 0
    assert res["ratios"]["slow/fast"]["median"] == pytest.approx(
        1 / res["ratios"]["fast/slow"]["median"], rel=0.5)
    assert len(res["round_loads"]) == res["rounds"] and "noisy_rounds" in res


def test_summarize_drops_noisy_rounds():
    samples = {"a": [1.0, 1.0, 9.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0, 2.0, 2.0]}
    noisy = [False, False, True, False, False]
    loads = [{"max": 0.0}, {"max": 0.0}, {"max": 2.0}, {"max": 0.0}, {"max": 0.0}]
    s = timing.summarize(samples, noisy, loads, threads=1, threshold=0.5)
    assert s["rounds_used"] == 4 and s["noisy_rounds"] == 1 and not s["used_noisy_rounds"]
    assert s["per"]["a"]["median_s"] == 1.0
    assert s["ratios"]["a/b"]["median"] == pytest.approx(0.5)


def test_check_bars():
    e = {"key": "C", "contenders": {
        "nnx-cpu": {"vs_floor": 1.02, "vs_torch": 0.9, "gemm_share": 0.85},
        "nnx-cuda": {"vs_torch": 1.2}}}
    bars = {b["what"]: b["ok"] for b in report.check_bars(e)}
    assert bars == {"nnx-cpu / floor-cpu": True,
                    "nnx-cpu GFLOP/s / NumPy GEMM rate": False,
                    "nnx-cuda / torch-cuda": False}
    e = {"key": "C-clip", "contenders": {"nnx-cpu": {"vs_floor": 1.0}},
         "vs_base": {"nnx-cpu": {"base": "C", "ratio": 1.05, "base_time_s": 1.0}}}
    assert {b["what"]: b["ok"] for b in report.check_bars(e)} == {
        "nnx-cpu clip overhead (C-clip / C step)": False}  # C-clip has no floor bar
    mem = [{"workload": "C", "contender": "floor-cpu", "peak_rss": 100,
            "traced_growth_per_step": 0},
           {"workload": "C", "contender": "nnx-cpu", "peak_rss": 130,
            "traced_growth_per_step": 10 ** 6}]
    mb = {b["what"].split(":")[1].strip().split(" ")[0]: b["ok"]
          for b in report.check_memory_bars(mem)}
    assert mb == {"training": False, "nnx-cpu": False}


def test_main_smoke_clip_overhead_is_paired(capsys):
    """C-clip's rounds also time nnx's and the floor's unclipped C step: the table's clip
    overhead line and the bar come from those paired ratios."""
    from nnx.benchmarks import main
    rc = main(["--smoke", "--workloads", "C-clip", "--no-memory", "--no-micro", "--no-save"])
    assert rc == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "clip overhead (C-clip@256 step / C@256" in ln)
    assert "nnx-cpu" in line and "floor-cpu" in line
    assert "C-clip@256 wide-mlp-clip" in out


def test_memory_child_reports_peak_and_growth():
    from nnx.benchmarks import memory
    m = memory.measure("C@128", "floor", "cpu", threads=1, steps=1, traced_steps=1, timeout=120)
    assert "error" not in m, m
    assert m["peak_rss"] >= m["rss_import"] > 0
    assert m["traced_growth_per_step"] is not None


def test_main_smoke_writes_report(tmp_path, capsys):
    """Every code path of ``python -m benchmarks`` in seconds; the table is printed last."""
    from nnx.benchmarks import main
    rc = main(["--smoke", "--workloads", "A,C", "--no-memory", "--out", str(tmp_path),
               "--name", "smoke"])
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.png").stat().st_size > 1000
    assert data["machine"]["cpu"]["model"] and data["machine"]["blas"]
    assert {e["key"] for e in data["workloads"]} == {"A", "C@256"}
    for e in data["workloads"]:
        assert "floor-cpu" in e["contenders"], e.get("skipped")
        assert "timing" in e and "threads" in e
        for label in ("nnx-cpu", "torch-cpu"):
            assert label in e["contenders"] or label in e["skipped"]
    c = next(e for e in data["workloads"] if e["key"] == "C@256")
    assert c["contenders"]["floor-cpu"].get("gemm_share") is not None
    assert data["micro"] and data["micro"][0]["rows"]
    assert out.rstrip().splitlines()[-1].startswith("load:")  # the table comes last
    assert "nnx benchmark" in out


def test_pytest_benchmark_files_import_and_are_not_collected_by_default():
    import importlib
    for mod in ("benchmarks.test_bench_workloads", "benchmarks.test_bench_kernels"):
        importlib.import_module(mod)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert cfg["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


@pytest.mark.skipif(CUDA_OK, reason="a GPU is present: the script would run the GPU checks")
def test_gpu_check_script_skips_without_gpu():
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("OUT", None)
    p = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("no GPU: skipped")


@pytest.mark.parametrize("kernel", list(__import__("benchmarks.micro").micro.SIZES))
def test_micro_variants_run_and_agree(kernel):
    """Every micro-benchmark variant runs; fused and unfused compute the same thing."""
    from nnx.benchmarks import micro
    torch = pytest.importorskip("torch")
    label, shape = micro.SIZES[kernel][0]
    fns = micro._variants(kernel, shape, backends.get_backend("cpu"), np, torch, "cpu")
    assert set(fns) == {"fused", "unfused", "torch"}
    outs = {k: f() for k, f in fns.items()}
    if kernel == "sigmoid_bwd":
        np.testing.assert_allclose(outs["fused"], outs["unfused"], rtol=1e-5, atol=1e-7)
    elif kernel == "sigmoid_fwd":
        np.testing.assert_allclose(outs["fused"], outs["unfused"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(outs["fused"], outs["torch"].numpy(), rtol=1e-5, atol=1e-7)
    elif kernel == "softmax_ce":
        (lf, gf, _), (lu, gu), (lt, gt) = outs["fused"], outs["unfused"], outs["torch"]
        assert float(lf) == pytest.approx(float(lu), rel=1e-5)
        assert float(lf) == pytest.approx(lt.item(), rel=1e-5)
        np.testing.assert_allclose(gf, gu, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(gf, gt.numpy(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------- D: mnist-cnn
def test_workload_d_definition():
    """Issue 10's D: PyTorch's MNIST convnet, batch 128, SGD 0.01, 9.16 GFLOP per step."""
    d = W.get("D")
    assert W.get("mnist-cnn") == d and (d.batch, d.optimizer, d.lr) == (128, "sgd", 0.01)
    assert [n for n, _ in d.layers()] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
                                         "Flatten", "Linear", "ReLU", "Linear"]
    assert d.layers()[0] == ("Conv2d", (1, 32, 3)) and d.layers()[6] == ("Linear", (9216, 128))
    assert d.param_keys() == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias",
                              "8.weight", "8.bias"]
    assert d.n_params == 1_199_882  # PyTorch's Net of examples/mnist
    per_sample = 32 * 9 * 26 * 26, 64 * 32 * 9 * 24 * 24, 9216 * 128, 128 * 10
    assert d.flops_per_step == 2 * 128 * (3 * sum(per_sample) - per_sample[0])
    assert round(d.flops_per_step / 1e9, 2) == 9.16
    p = W.init_params(d)
    assert {k: v.shape for k, v in p.items()} == d.param_shapes()
    assert p["2.weight"].shape == (64, 32, 3, 3) and p["2.weight"].dtype == np.float32
    assert float(np.abs(p["2.weight"]).max()) <= 1 / np.sqrt(32 * 9)
    x, y = W.make_batches(d)[0]
    assert x.shape == (128, 1, 28, 28) and y.shape == (128,) and y.max() < 10
    assert W.get("D@16").batch == 16 and W.get("D@16").layers() == d.layers()


def _d_params_with_ties(w):
    """D's parameters with 8 of conv2's channels constant (zero kernel, bias 0.5): every 2x2
    window of those channels is a four-way tie, so the max-pool's gradient routing (to the
    first maximum, as PyTorch) decides the gradients of conv1 and conv2."""
    p = W.init_params(w)
    p["2.weight"][:8] = 0.0
    p["2.bias"][:8] = 0.5
    return p


@pytest.mark.parametrize("ties", [False, True], ids=["random", "pool-ties"])
@pytest.mark.parametrize("key", ["D", "D@8"])
def test_floor_cnn_gradients_match_torch(key, ties):
    """The CNN floor's loss and gradients equal PyTorch's on the same weights and batch."""
    pytest.importorskip("torch")
    w = W.get(key)
    p = _d_params_with_ties(w) if ties else W.init_params(w)
    b = W.make_batches(w)
    floor, ref = C.make("floor", w, p, b), C.make("torch", w, p, b)
    assert floor.info["impl"] == "benchmarks/floor_cnn.py"
    _assert_close(floor.gradients(), ref.gradients(), 2e-5, f"{key} floor vs torch grads")
    assert floor.loss_value() == pytest.approx(ref.loss_value(), rel=1e-5)


def test_floor_cnn_updates_match_torch():
    """Three SGD steps over alternating batches leave PyTorch's parameters."""
    pytest.importorskip("torch")
    w = W.get("D@8")
    p, b = W.init_params(w), W.make_batches(w)
    floor, ref = C.make("floor", w, p, b), C.make("torch", w, p, b)
    for _ in range(3):
        floor.step()
        ref.step()
    got, want = floor.state_dict(), ref.state_dict()
    for k in want:
        assert float(np.abs(want[k] - p[k]).max()) > 0, k
        err = float(np.abs(got[k] - want[k]).max())
        assert err <= 1e-5 * float(np.abs(want[k]).max()), f"{k}: {err:.3g}"
    assert floor.loss_value() == pytest.approx(ref.loss_value(), rel=1e-5)


def _nnx_has_cnn():
    import nnx
    return all(hasattr(nnx.nn, n) for n in ("Conv2d", "MaxPool2d"))


@pytest.mark.parametrize("ties", [False, True], ids=["random", "pool-ties"])
def test_floor_cnn_gradients_match_nnx(ties):
    if not _nnx_has_cnn():
        pytest.skip("nnx.nn has no Conv2d / MaxPool2d yet")
    w = W.get("D@8")
    p = _d_params_with_ties(w) if ties else W.init_params(w)
    b = W.make_batches(w)
    floor, ref = C.make("floor", w, p, b), C.make("nnx", w, p, b)
    _assert_close(floor.gradients(), ref.gradients(), 2e-5, "D floor vs nnx grads")
    assert floor.loss_value() == pytest.approx(ref.loss_value(), rel=1e-5)


@pytest.mark.parametrize("name", ["floor", "nnx", "torch"])
def test_workload_d_builds_and_steps(name):
    if name == "nnx" and not _nnx_has_cnn():
        pytest.skip("nnx.nn has no Conv2d / MaxPool2d yet")
    c = _make(name, "D")
    c.set_threads(1)
    c.activate()
    before = c.state_dict()
    c.step()
    assert np.isfinite(c.loss_value())
    after = c.state_dict()
    assert list(after) == W.get("D").param_keys()
    assert all(not np.array_equal(before[k], after[k]) for k in after)


def test_floor_cnn_has_no_cuda_path():
    with pytest.raises(C.Skip, match="NumPy only"):
        C.FloorContender(W.get("D@8"), W.init_params(W.get("D@8")),
                         W.make_batches(W.get("D@8")), "cuda")


def test_memory_bar_d():
    mem = [{"workload": "D", "contender": "floor-cpu", "peak_rss": 100},
           {"workload": "D", "contender": "nnx-cpu", "peak_rss": 140}]
    (bar,) = report.check_memory_bars(mem)
    assert bar["limit"] == 1.5 and bar["ok"]


def test_gpu_kernel_bandwidth_runs_on_emulated_kernels():
    """``benchmarks/gpu_kernels.py`` (run by gpu_check.sh on a GPU) drives the real launch
    paths of im2col, col2im and the max-pool kernels: here on the emulated CUDA kernels, tiny
    shapes, a wall-clock timer (the numbers mean nothing; the script must not break)."""
    cuda_emu = pytest.importorskip("cuda_emu")
    if not cuda_emu.compiler_available():
        pytest.skip("no g++ for the emulated kernels")
    from nnx.benchmarks import gpu_kernels
    with cuda_emu.emulated_backend() as be:
        res = gpu_kernels.run(be, gpu_kernels.wall_timer,
                              dict(n=2, c=3, h=6, w=5, pool_c=2, pool_hw=4), reps=1)
    assert set(res) == {"copy", "im2col", "col2im", "maxpool2d_fwd", "maxpool2d_bwd"}
    for name, r in res.items():
        assert "error" not in r, (name, r)
        assert r["gbps"] > 0 and (name == "copy" or "vs_copy" in r)
    assert res["im2col"]["bytes"] == 4 * (2 * 3 * 9 * 4 * 3 + 2 * 3 * 6 * 5)
    assert "MB moved" in gpu_kernels.table(res)


@pytest.mark.skipif(CUDA_OK, reason="a GPU is present")
def test_gpu_kernels_script_skips_without_gpu(capsys):
    from nnx.benchmarks import gpu_kernels
    assert gpu_kernels.main([]) == 0
    assert capsys.readouterr().out.startswith("no GPU: skipped")


def test_main_smoke_runs_d(capsys):
    """D through the suite's runner (smoke: D at batch 16): the floor, nnx (when it has the
    layers) and torch are timed, and the floor bar is checked."""
    from nnx.benchmarks import main
    rc = main(["--smoke", "--workloads", "D", "--no-memory", "--no-micro", "--no-save",
               "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "D@16 mnist-cnn" in out and "floor-cpu" in out
    if _nnx_has_cnn():
        assert "/ floor-cpu" in out  # the nnx <= 1.10 x floor bar, ok or MISS
