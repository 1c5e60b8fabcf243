"""nnx.optim.lr_scheduler against torch.optim.lr_scheduler: lr sequences, state dicts, errors,
and that a scheduled lr trains exactly as an lr set by hand, with no host sync."""
import math
import warnings

import numpy as np
import pytest

import nnx
from nnx import nn, optim
from nnx.optim import lr_scheduler as nsched

torch = pytest.importorskip("torch")
tsched = torch.optim.lr_scheduler

STEPS = 100
LRS = (0.1, 0.03)


def _groups(lib, momentum=None, adam=False):
    if lib == "torch":
        ps = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in LRS]
        mod = torch.optim
    else:
        ps = [nn.Parameter(nnx.tensor(np.zeros(3))) for _ in LRS]
        mod = optim
    groups = [{"params": [p], "lr": lr} for p, lr in zip(ps, LRS)]
    if adam:
        return mod.Adam(groups, lr=LRS[0]), ps
    kw = {} if momentum is None else {"momentum": momentum}
    return mod.SGD(groups, lr=LRS[0], **kw), ps


def _sequential(m, opt):
    s1 = m.LinearLR(opt, start_factor=0.1, total_iters=10)
    s2 = m.CosineAnnealingLR(opt, T_max=30)
    s3 = m.ExponentialLR(opt, gamma=0.95)
    return m.SequentialLR(opt, [s1, s2, s3], milestones=[10, 50])


def _warmup(e):
    return min(1.0, (e + 1) / 10) * 0.97 ** e


SCHEDULERS = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=7),
    "StepLR-gamma": lambda m, o: m.StepLR(o, step_size=3, gamma=0.8),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[10, 30, 30, 75], gamma=0.5),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.97),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=100),
    "CosineAnnealingLR-restart": lambda m, o: m.CosineAnnealingLR(o, T_max=17, eta_min=1e-3),
    "LinearLR": lambda m, o: m.LinearLR(o),
    "LinearLR-decay": lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=60),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=_warmup),
    "LambdaLR-per-group": lambda m, o: m.LambdaLR(o, lr_lambda=[_warmup, lambda e: 0.99 ** e]),
    "SequentialLR": _sequential,
    "SequentialLR-two": lambda m, o: m.SequentialLR(
        o, [m.ExponentialLR(o, gamma=0.9), m.StepLR(o, step_size=5, gamma=0.5)], milestones=[20]),
    "OneCycleLR-cos": lambda m, o: m.OneCycleLR(o, max_lr=[1.0, 0.4], total_steps=STEPS),
    "OneCycleLR-linear": lambda m, o: m.OneCycleLR(o, max_lr=0.5, epochs=10, steps_per_epoch=10,
                                                   anneal_strategy="linear", pct_start=0.25),
    "OneCycleLR-three-phase": lambda m, o: m.OneCycleLR(o, max_lr=0.8, total_steps=STEPS + 20,
                                                        three_phase=True, div_factor=10.0,
                                                        final_div_factor=100.0),
    "OneCycleLR-no-momentum": lambda m, o: m.OneCycleLR(o, max_lr=0.3, total_steps=STEPS,
                                                        cycle_momentum=False),
}
MOMENTUM_OPT = {"OneCycleLR-cos": dict(momentum=0.9), "OneCycleLR-linear": dict(momentum=0.9),
                "OneCycleLR-three-phase": dict(adam=True)}


def _record(opt):
    out = []
    for g in opt.param_groups:
        m = g["betas"][0] if "betas" in g else g.get("momentum")
        out.append((float(g["lr"]), None if m is None else float(m)))
    return out


def _run(lib, name, steps=STEPS):
    opt, ps = _groups(lib, **MOMENTUM_OPT.get(name, {}))
    sched = SCHEDULERS[name](torch.optim.lr_scheduler if lib == "torch" else nsched, opt)
    seq, last = [_record(opt)], [list(sched.get_last_lr())]
    for _ in range(steps):
        if lib == "torch":
            opt.step()  # no grads: a no-op, but keeps torch's step-order check quiet
        sched.step()
        seq.append(_record(opt))
        last.append(list(sched.get_last_lr()))
    return seq, last, opt, sched


def _assert_close(a, b, tol=1e-12):
    assert len(a) == len(b)
    for i, (ra, rb) in enumerate(zip(a, b)):
        for (la, ma), (lb, mb) in zip(ra, rb):
            assert la == pytest.approx(lb, rel=tol, abs=tol), (i, ra, rb)
            assert (ma is None) == (mb is None), (i, ra, rb)
            if ma is not None:
                assert ma == pytest.approx(mb, rel=tol, abs=tol), (i, ra, rb)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_sequence_matches_torch(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither side should warn in the ordinary use
        tseq, tlast, topt, _ = _run("torch", name)
        nseq, nlast, nopt, _ = _run("nnx", name)
    _assert_close(nseq, tseq)
    for a, b in zip(nlast, tlast):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    for tg, ng in zip(topt.param_groups, nopt.param_groups):
        assert ng["initial_lr"] == pytest.approx(tg["initial_lr"], rel=1e-15)
    assert len({r[0][0] for r in nseq}) > 1  # the schedule did change the lr


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_state_dict_round_trip_resumes(name, tmp_path):
    cut = 37
    full, _, _, _ = _run("nnx", name)
    _, _, opt, sched = _run("nnx", name, steps=cut)
    path = tmp_path / "ck.nnx"
    nnx.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, str(path))
    ck = nnx.load(str(path))
    opt2, _ = _groups("nnx", **MOMENTUM_OPT.get(name, {}))
    sched2 = SCHEDULERS[name](nsched, opt2)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert sched2.last_epoch == sched.last_epoch
    assert sched2.get_last_lr() == sched.get_last_lr()
    rest = [_record(opt2)]
    for _ in range(STEPS - cut):
        sched2.step()
        rest.append(_record(opt2))
    _assert_close(rest, full[cut:], tol=0)


def test_initial_lr_and_base_lrs_as_torch():
    opt, _ = _groups("nnx")
    s = nsched.StepLR(opt, step_size=2)
    assert s.last_epoch == 0 and s._step_count == 1
    assert s.base_lrs == list(LRS)
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)
    # a second scheduler keeps the initial_lr already set
    opt.param_groups[0]["lr"] = 0.5
    s2 = nsched.ExponentialLR(opt, gamma=0.5)
    assert s2.base_lrs == list(LRS)
    # resuming (last_epoch >= 0) needs initial_lr in every group
    opt3, _ = _groups("nnx")
    with pytest.raises(KeyError):
        nsched.StepLR(opt3, step_size=2, last_epoch=4)
    topt, _ = _groups("torch")
    with pytest.raises(KeyError):
        tsched.StepLR(topt, step_size=2, last_epoch=4)


@pytest.mark.parametrize("name", ["StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR-decay",
                                  "MultiStepLR"])
def test_step_with_epoch_uses_closed_form_as_torch(name):
    out = {}
    for lib, m in (("torch", tsched), ("nnx", nsched)):
        opt, _ = _groups(lib)
        s = SCHEDULERS[name](m, opt)
        seq = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for e in (3, 10, 31, 60, 99):
                if lib == "torch":
                    opt.step()
                s.step(e)
                seq.append(list(s.get_last_lr()))
        out[lib] = seq
    for a, b in zip(out["nnx"], out["torch"]):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    opt, _ = _groups("nnx")
    s = nsched.StepLR(opt, step_size=2)
    with pytest.warns(UserWarning, match="deprecated"):
        s.step(3)
    with pytest.warns(UserWarning, match="get_last_lr"):
        s.get_lr()


METRICS = [1.0, 0.9, 0.9, 0.95, 0.91, 0.9, 0.89999, 0.8, 0.85, 0.85, 0.85, 0.86, 0.7, 0.7,
           0.71, 0.72, 0.73, 0.69, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75,
           0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75]


@pytest.mark.parametrize("kw", [
    dict(patience=2),
    dict(patience=1, factor=0.5, cooldown=2),
    dict(mode="max", patience=1, factor=0.3, threshold=0.01),
    dict(mode="min", patience=0, threshold_mode="abs", threshold=0.02, min_lr=[0.01, 0.001]),
    dict(mode="max", patience=2, threshold_mode="abs", threshold=0.0, min_lr=0.02, cooldown=1),
    dict(patience=0, factor=0.9, eps=0.005),
])
def test_reduce_lr_on_plateau_matches_torch(kw, tmp_path):
    seqs = {}
    for lib, m in (("torch", tsched), ("nnx", nsched)):
        opt, _ = _groups(lib)
        s = m.ReduceLROnPlateau(opt, **kw)
        seq = [list(s.get_last_lr())]
        for v in METRICS * 2:
            s.step(v)
            seq.append(list(s.get_last_lr()))
            assert s.get_last_lr() == [g["lr"] for g in opt.param_groups]
        seqs[lib] = (seq, s)
    (nseq, ns), (tseq, ts) = seqs["nnx"], seqs["torch"]
    np.testing.assert_allclose(np.array(nseq), np.array(tseq), rtol=1e-12, atol=0)
    assert len({tuple(r) for r in nseq}) > 1
    for k in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
        assert getattr(ns, k) == getattr(ts, k)
    # state dict round trip through a checkpoint
    opt, _ = _groups("nnx")
    s = nsched.ReduceLROnPlateau(opt, **kw)
    for v in METRICS[:11]:
        s.step(v)
    nnx.save({"opt": opt.state_dict(), "s": s.state_dict()}, str(tmp_path / "p.nnx"))
    ck = nnx.load(str(tmp_path / "p.nnx"))
    opt2, _ = _groups("nnx")
    s2 = nsched.ReduceLROnPlateau(opt2)
    opt2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["s"])
    for v in (METRICS * 2)[11:]:
        s.step(v)
        s2.step(v)
        assert s2.get_last_lr() == s.get_last_lr()
    assert s2.get_last_lr() == nseq[-1]


def test_reduce_lr_on_plateau_takes_a_tensor_metric():
    opt, _ = _groups("nnx")
    s = nsched.ReduceLROnPlateau(opt, patience=0)
    s.step(nnx.tensor(1.0))
    s.step(nnx.tensor(2.0))
    assert s.get_last_lr() == pytest.approx([LRS[0] * 0.1, LRS[1] * 0.1])


def _both_raise(make, exc):
    for lib, m in (("torch", tsched), ("nnx", nsched)):
        opt, _ = _groups(lib, momentum=0.9)
        with pytest.raises(exc):
            make(m, opt)


@pytest.mark.parametrize("make,exc", [
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, epochs=3), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10.0), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, epochs=0, steps_per_epoch=3), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, epochs=2, steps_per_epoch=-1), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError),
    (lambda m, o: m.OneCycleLR(o, max_lr=[0.1, 0.2, 0.3], total_steps=10), ValueError),
    (lambda m, o: m.LinearLR(o, start_factor=0), ValueError),
    (lambda m, o: m.LinearLR(o, start_factor=1.5), ValueError),
    (lambda m, o: m.LinearLR(o, end_factor=-0.1), ValueError),
    (lambda m, o: m.LambdaLR(o, lr_lambda=[lambda e: 1.0]), ValueError),
    (lambda m, o: m.ReduceLROnPlateau(o, factor=1.0), ValueError),
    (lambda m, o: m.ReduceLROnPlateau(o, mode="up"), ValueError),
    (lambda m, o: m.ReduceLROnPlateau(o, threshold_mode="pct"), ValueError),
    (lambda m, o: m.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError),
    (lambda m, o: m.SequentialLR(o, [], milestones=[]), ValueError),
    (lambda m, o: m.SequentialLR(o, [m.StepLR(o, 2), m.StepLR(o, 3)], milestones=[]), ValueError),
    (lambda m, o: m.SequentialLR(o, [m.StepLR(o, 2), m.ReduceLROnPlateau(o)], milestones=[3]),
     ValueError),
    (lambda m, o: m.StepLR(object(), 2), TypeError),
    (lambda m, o: m.ReduceLROnPlateau(object()), TypeError),
])
def test_bad_arguments_raise_as_torch(make, exc):
    _both_raise(make, exc)


def test_one_cycle_errors_past_total_steps_and_without_momentum():
    for lib, m in (("torch", tsched), ("nnx", nsched)):
        opt, _ = _groups(lib)
        s = m.OneCycleLR(opt, max_lr=0.1, total_steps=3, cycle_momentum=False)
        for _ in range(3):
            if lib == "torch":
                opt.step()
            s.step()
        with pytest.raises(ValueError, match="Tried to step 4 times"):
            s.step()

    class NoMomentum:
        defaults = {"lr": 0.1}
        param_groups = [{"lr": 0.1}]
    with pytest.raises(ValueError, match="momentum or beta1"):
        nsched.OneCycleLR(NoMomentum(), max_lr=0.1, total_steps=10)
    s = nsched.OneCycleLR(NoMomentum(), max_lr=0.1, total_steps=10, cycle_momentum=False)
    assert s.get_last_lr() == [pytest.approx(0.1 / 25)]


def test_sequential_rejects_a_foreign_scheduler():
    opt, _ = _groups("nnx")
    other, _ = _groups("nnx")
    with pytest.raises(ValueError, match="same optimizer"):
        nsched.SequentialLR(opt, [nsched.StepLR(opt, 2), nsched.StepLR(other, 2)], milestones=[3])


def _model_and_data(seed=0):
    nnx.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x = nnx.tensor(np.random.default_rng(0).standard_normal((16, 4)))
    y = nnx.tensor(np.random.default_rng(1).standard_normal((16, 2)))
    return model, x, y


OPTS = {
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
}
TRAIN_SCHEDS = {
    "cosine": lambda o: nsched.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
    "onecycle": lambda o: nsched.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "sequential": lambda o: nsched.SequentialLR(
        o, [nsched.LinearLR(o, start_factor=0.2, total_iters=4), nsched.ExponentialLR(o, gamma=0.8)],
        milestones=[4]),
}


def _train(model, x, y, opt, steps, before_step):
    crit = nn.MSELoss()
    for i in range(steps):
        before_step(i)
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("sched", sorted(TRAIN_SCHEDS))
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_training_with_a_scheduler_equals_setting_lr_by_hand(opt_name, sched):
    steps = 12
    model, x, y = _model_and_data()
    opt = OPTS[opt_name](model.parameters())
    s = TRAIN_SCHEDS[sched](opt)
    hyper = []

    def record(i):
        g = opt.param_groups[0]
        hyper.append((g["lr"], g.get("momentum"), g.get("betas")))
    _train(model, x, y, opt, steps, lambda i: (s.step() if i else None, record(i)))
    # (the first step uses the constructor's lr; s.step() comes after each optimizer step)

    model2, x2, y2 = _model_and_data()
    opt2 = OPTS[opt_name](model2.parameters())

    def set_by_hand(i):
        lr, mom, betas = hyper[i]
        g = opt2.param_groups[0]
        g["lr"] = lr
        if mom is not None:
            g["momentum"] = mom
        if betas is not None:
            g["betas"] = betas
    _train(model2, x2, y2, opt2, steps, set_by_hand)
    assert len({h[0] for h in hyper}) > 3
    for p, q in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


@pytest.mark.parametrize("sched", sorted(TRAIN_SCHEDS))
@pytest.mark.parametrize("opt_name", sorted(OPTS))
def test_scheduled_training_makes_no_host_sync(strict, opt_name, sched):
    sb = strict
    model, x, y = _model_and_data()
    opt = OPTS[opt_name](model.parameters())
    s = TRAIN_SCHEDS[sched](opt)
    crit = nn.MSELoss()
    for _ in range(6):
        sb.reset_sync_count()
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
        s.step()
        n = sb.sync_counts["count"]
        assert n == 0, [w for w, _ in sb.sync_counts["where"]]
    assert all(isinstance(v, float) for v in s.get_last_lr())
    plateau = nsched.ReduceLROnPlateau(opt, patience=0)
    sb.reset_sync_count()
    plateau.step(0.5)  # a host float metric: nothing to sync
    plateau.step(0.7)
    assert sb.sync_counts["count"] == 0
    assert math.isclose(plateau.get_last_lr()[0], s.get_last_lr()[0] * 0.1)
