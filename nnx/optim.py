"""Optimizers with PyTorch's update rules, each step one fused pass per parameter group.

On construction an optimizer moves its parameters into flat per-(device, dtype) buffers: each
parameter's ``data`` becomes a view of one contiguous array, and its gradient lives in a view of
a second one. Backward writes gradients into those views in place, ``zero_grad`` is one flag
per parameter, and ``step`` is one call of the backend's fused update kernel over the whole
buffer (the optimizer state is flat too). When a parameter has no gradient this step, or was
moved since (``model.to``), the optimizer falls back to per-parameter updates or re-flattens.
"""
from __future__ import annotations

import numpy as np

from . import _config
from .errors import DTypeError
from .tensor import Tensor, _wrap

__all__ = ["Optimizer", "SGD", "Adam"]


class _FlatGroup:
    """Parameters of one backend and dtype as views of one flat buffer (plus a flat gradient)."""

    def __init__(self, params):
        p0 = params[0]
        self.backend, self.dtype = p0._backend, p0.dtype
        xp = self.backend.xp
        self.params = list(params)
        total = sum(int(p.data.size) for p in params)
        try:
            self.data = xp.empty(total, dtype=self.dtype)
            self.grad = xp.zeros(total, dtype=self.dtype)
        except MemoryError as e:  # nothing is changed yet: the parameters keep their storage
            _reraise_oom(e, self.backend, f"the optimizer's flat buffers ({len(params)} "
                         f"parameters, {total:,} elements of {self.dtype})")
            raise
        self.slices = []
        off = 0
        for p in params:
            n = int(p.data.size)
            sl = slice(off, off + n)
            view = self.data[sl].reshape(p.shape)
            view[...] = p.data
            gview = self.grad[sl].reshape(p.shape)
            old_grad = p._grad
            if hasattr(p, "_set_data"):
                p._set_data(view)  # a Parameter: leaves any earlier flat buffer
            else:
                p.data = view
            p._gbuf = _wrap(gview, self.backend)  # the gradient's Tensor, reused every step
            p._flat = self
            if old_grad is not None:
                gview[...] = old_grad.data
                p._grad = _wrap(gview, self.backend)
                p._grad_owned = True
            self.slices.append(sl)
            off += n
        self.state = {}  # name -> flat state array
        # Steps taken: one shared count while every parameter has stepped together (the fused
        # path), a per-parameter list once some parameter skipped a step (no gradient).
        self.step = 0
        self.steps = None

    def param_step(self, i):
        return self.step if self.steps is None else self.steps[i]

    def set_param_step(self, i, value):
        if self.steps is None:
            if value == self.step:
                return
            self.steps = [self.step] * len(self.params)
        self.steps[i] = value
        if all(v == value for v in self.steps):
            self.step, self.steps = value, None

    def shared_step(self):
        """The common step count of all parameters, or None when they differ."""
        return self.step if self.steps is None else None

    def valid(self):
        for p in self.params:
            if p._flat is not self:
                return False
        return True

    def all_have_grads(self):
        for p in self.params:
            if p._grad is None:
                return False
        return True

    def state_buffer(self, name):
        buf = self.state.get(name)
        if buf is None:
            try:
                buf = self.backend.xp.zeros(self.data.size, dtype=self.dtype)
            except MemoryError as e:
                _reraise_oom(e, self.backend, f"the optimizer state {name!r} ({self.data.size:,} "
                             f"elements of {self.dtype})")
                raise
            self.state[name] = buf
        return buf

    def view(self, flat, i):
        return flat[self.slices[i]].reshape(self.params[i].shape)


def _reraise_oom(exc, backend, where):
    err = _config.out_of_memory(exc, backend, where)
    if err is not None:
        raise err from exc


class Optimizer:
    """Base class: parameter groups, flat buffers, ``zero_grad``, ``state_dict``."""

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Parameters (e.g. model.parameters()), "
                            "not a single tensor")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        self._flats = []  # one list of _FlatGroup per param group
        for g in params:
            self.add_param_group(g)

    def add_param_group(self, group):
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be tensors, got {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf tensor")
            if p.dtype.kind != "f":
                raise DTypeError(f"optimizer params must be floating, got dtype {p.dtype}")
            if id(p) in seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        group["params"] = ps
        self._validate(group)
        self.param_groups.append(group)
        self._flats.append(self._flatten(ps))

    def _validate(self, group):
        if group["lr"] < 0:
            raise ValueError(f"invalid learning rate: {group['lr']}")

    @staticmethod
    def _flatten(params):
        by_key = {}
        for p in params:
            by_key.setdefault((id(p._backend), p.dtype), []).append(p)
        return [_FlatGroup(ps) for ps in by_key.values()]

    def _current_flats(self, gi):
        flats = self._flats[gi]
        for j, fg in enumerate(flats):
            if not fg.valid():  # a parameter was moved or re-created: rebuild, keeping state
                fresh = self._flatten(fg.params)
                for nf in fresh:
                    for i, p in enumerate(nf.params):
                        nf.set_param_step(i, fg.param_step(_index(fg.params, p)))
                    for name, buf in fg.state.items():
                        nb = nf.state_buffer(name)
                        for i, p in enumerate(nf.params):
                            old_i = _index(fg.params, p)
                            src = fg.view(buf, old_i)
                            nf.view(nb, i)[...] = nf.backend.asarray(
                                fg.backend.to_host(src)) if nf.backend is not fg.backend else src.astype(nf.dtype)
                flats = flats[:j] + fresh + flats[j + 1:]
                self._flats[gi] = flats
                return self._current_flats(gi)
        return flats

    def zero_grad(self, set_to_none=True):
        """Clear the gradients: set them to None (default, as PyTorch) or to zeros (one fill)."""
        for gi, group in enumerate(self.param_groups):
            if set_to_none:
                for p in group["params"]:
                    p._grad = None
            else:
                for p in group["params"]:  # as PyTorch: zero the gradients that exist
                    if p._grad is not None:
                        p._grad.data[...] = 0

    def step(self, closure=None):
        loss = None
        if closure is not None:
            from . import _config

            with _config.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            flats = self._flats[gi]
            for fg in flats:
                if not fg.valid():
                    flats = self._current_flats(gi)
                    break
            for fg in flats:
                self._step_flat(group, fg)
        return loss

    def _step_flat(self, group, fg):  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    _state_names: tuple = ()

    @property
    def state(self):
        """Per-parameter state (PyTorch layout): ``{param: {"step": int, name: Tensor view}}``."""
        out = {}
        for gi in range(len(self.param_groups)):
            for fg in self._current_flats(gi):
                for i, p in enumerate(fg.params):
                    step = fg.param_step(i)
                    if not step:
                        continue
                    d = {"step": step}
                    for name in self._state_names:
                        if name in fg.state:
                            d[name] = _wrap(fg.view(fg.state[name], i), fg.backend)
                    out[p] = d
        return out

    def state_dict(self):
        """``{"state": {index: {...}}, "param_groups": [...]}`` with host NumPy arrays, in
        PyTorch's layout (parameters numbered in group order)."""
        state, groups, idx = {}, [], 0
        for gi, group in enumerate(self.param_groups):
            ids = []
            flats = self._current_flats(gi)
            where = {id(p): (fg, i) for fg in flats for i, p in enumerate(fg.params)}
            for p in group["params"]:
                fg, i = where[id(p)]
                step = fg.param_step(i)
                if step:
                    d = {"step": int(step)}
                    for name in self._state_names:
                        if name in fg.state:
                            d[name] = np.array(fg.backend.to_host(fg.view(fg.state[name], i)), copy=True)
                    state[idx] = d
                ids.append(idx)
                idx += 1
            g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            g["params"] = ids
            groups.append(g)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore state saved by ``state_dict`` (checks group sizes and state shapes first)."""
        from .errors import CheckpointError

        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise CheckpointError("optimizer load_state_dict: expected a dict with 'state' and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise CheckpointError(f"optimizer load_state_dict: {len(groups)} parameter groups saved, "
                                  f"{len(self.param_groups)} in this optimizer")
        plan = []
        raw_state = state_dict["state"]
        st = {int(k): v for k, v in raw_state.items()}
        for gi, (saved, group) in enumerate(zip(groups, self.param_groups)):
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise CheckpointError(f"optimizer load_state_dict: group {gi} has {len(ids)} "
                                      f"parameters saved, {len(group['params'])} here")
            flats = self._current_flats(gi)
            where = {id(p): (fg, i) for fg in flats for i, p in enumerate(fg.params)}
            for idx, p in zip(ids, group["params"]):
                s = st.get(int(idx))
                fg, i = where[id(p)]
                if s is None:
                    plan.append((p, None, fg, i))
                    continue
                for name in self._state_names:
                    if name in s:
                        arr = np.asarray(s[name])
                        if arr.shape != p.shape:
                            raise CheckpointError(f"optimizer load_state_dict: state {name!r} of "
                                                  f"parameter {idx} has shape {arr.shape}, "
                                                  f"expected {p.shape}")
                plan.append((p, s, fg, i))
        for saved, group in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(group.get(k), tuple) else v
        for p, s, fg, i in plan:
            if s is None:
                fg.set_param_step(i, 0)
                continue
            fg.set_param_step(i, max(int(np.asarray(s.get("step", 1))), 1))
            for name in self._state_names:
                if name in s:
                    fg.view(fg.state_buffer(name), i)[...] = fg.backend.asarray(
                        np.asarray(s[name], dtype=fg.dtype))

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _index(seq, obj):
    for i, x in enumerate(seq):
        if x is obj:
            return i
    raise ValueError("parameter not found")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    PyTorch's rule: d = g + wd * p; buf = d (first step) or momentum * buf + (1 - dampening) * d;
    d = d + momentum * buf (Nesterov) or buf; p -= lr * d.
    """

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay))

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError(f"invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"invalid weight_decay value: {group['weight_decay']}")

    def _step_flat(self, group, fg):
        mom = float(group["momentum"])
        lr, damp = float(group["lr"]), float(group["dampening"])
        nesterov, wd = bool(group["nesterov"]), float(group["weight_decay"])
        buf = None
        if mom:
            buf = fg.state.get("momentum_buffer")
            if buf is None:
                buf = fg.state_buffer("momentum_buffer")
        step = fg.shared_step()
        if step is not None and fg.all_have_grads():  # the fused path: one pass over everything
            fg.backend.sgd_update_(fg.data, fg.grad, buf, lr, mom, damp, nesterov, wd, step == 0)
            fg.step = step + 1
            return
        for i, p in enumerate(fg.params):  # some parameters lack a gradient this step
            if p._grad is None:
                continue
            t = fg.param_step(i)
            fg.backend.sgd_update_(fg.view(fg.data, i), fg.view(fg.grad, i),
                                   fg.view(buf, i) if buf is not None else None, lr, mom, damp,
                                   nesterov, wd, t == 0)
            fg.set_param_step(i, t + 1)


class Adam(Optimizer):
    """Adam (Kingma & Ba, https://arxiv.org/abs/1412.6980) with PyTorch's update rule and L2
    weight decay: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _validate(self, group):
        super()._validate(group)
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas: {group['betas']}")
        if group["eps"] < 0:
            raise ValueError(f"invalid eps: {group['eps']}")

    def _step_flat(self, group, fg):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = group["betas"]
        b1, b2 = float(b1), float(b2)
        st = fg.state
        m, v = st.get("exp_avg"), st.get("exp_avg_sq")
        if m is None or v is None:
            m, v = fg.state_buffer("exp_avg"), fg.state_buffer("exp_avg_sq")
        step = fg.shared_step()
        if step is not None and fg.all_have_grads():  # the fused path: one pass over everything
            fg.backend.adam_update_(fg.data, fg.grad, m, v, lr, b1, b2, eps, wd, step + 1)
            fg.step = step + 1
            return
        for i, p in enumerate(fg.params):
            if p._grad is None:
                continue
            t = fg.param_step(i) + 1
            fg.backend.adam_update_(fg.view(fg.data, i), fg.view(fg.grad, i), fg.view(m, i),
                                    fg.view(v, i), lr, b1, b2, eps, wd, t)
            fg.set_param_step(i, t)
