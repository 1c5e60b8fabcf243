"""Define-by-run reverse-mode autograd over coarse functions.

Every op is a ``Function`` with ``forward(*arrays) -> array`` and ``backward(gy) -> grads``
written against the backend (``self.backend``, ``self.xp``), one graph node per op, one output
per node. ``backward`` visits nodes in topological order (built iteratively, so deep graphs
cannot hit the recursion limit) and accumulates into leaves in place.
"""
from __future__ import annotations

import heapq
import inspect
import itertools

import numpy as np

from . import backends
from . import _config
from .errors import AnomalyError, DeviceError, GraphError

_state = _config._state
_creation_order = itertools.count()  # a node's number: its consumers always have larger ones
# ``tracer(fn, inputs, output)`` called after every op while a trace is on (``nnx.onnx``);
# None otherwise, so the hot path pays one global test.
_tracer = None
# Callables run, in order, at the end of every ``backward()``, once all gradients are written
# (``nnx.nn.parallel.DistributedDataParallel`` averages its gradients across processes there).
backward_end_hooks = []


class Function:
    """One differentiable op: a node of the graph.

    Subclasses implement ``forward(self, *xs)`` returning one backend array and
    ``backward(self, gy)`` returning one gradient array (or None) per input, in input order.
    During both, ``self.backend`` is the inputs' backend and ``self.xp`` its array module;
    ``self.needs_input_grad`` (a tuple of bools, or None when no graph is recorded) tells
    ``forward`` what to save and ``backward`` what to compute. ``self.unit_grad`` is true when
    ``gy`` is the implicit 1 of ``loss.backward()``, so a loss can hand back a gradient it
    already computed without scaling it.
    """

    inputs = None
    needs_input_grad = None
    unit_grad = False
    released = False
    # The activation the output ends in (an entry name of ``backends.activations``), for ops
    # that end in one (``Activation``, ``LinearChain``); such an op also offers
    # ``backward_from_preactivation(g)``, which a loss fused with that activation calls.
    output_activation = None
    # The backend of the output when it differs from the inputs' (a device move); None: theirs.
    output_backend = None
    # Nodes whose backward this node runs itself (a loss fused with the activation before it):
    # a backward that frees the graph frees them too, after the pass.
    absorbed = ()

    def __init_subclass__(cls, **kwargs):
        # A PyTorch-style Function (``@staticmethod forward(ctx, ...)``/``backward(ctx, g)``,
        # called as ``F.apply(...)``) gets the classmethod ``apply`` of ``_torch_style_apply``;
        # decided once here, so today's instance ``apply`` stays as it is.
        super().__init_subclass__(**kwargs)
        if isinstance(inspect.getattr_static(cls, "forward"), staticmethod) \
                and "apply" not in cls.__dict__:
            cls.apply = classmethod(_torch_style_apply)

    def apply(self, *inputs):
        b = inputs[0]._backend
        datas, needs = [], []
        for t in inputs:
            if t._backend is not b:
                _device_mismatch(self, inputs)
            datas.append(t.data)
            needs.append(t.requires_grad)
        self.backend = b
        self.xp = b.xp
        record = _state.grad_enabled and True in needs
        if record:
            self.needs_input_grad = needs
        anomaly = _config.detect_anomaly_enabled
        try:
            if anomaly:
                # NumPy would warn about log(-1) or 1/0 (an error under -W error) before the
                # check below could name the op: let it produce the NaN/inf, then raise.
                with np.errstate(all="ignore"):
                    y = self.forward(*datas)
            else:
                y = self.forward(*datas)
        except MemoryError as e:
            _reraise_oom(e, b, self, "forward", inputs)
            raise
        ob = self.output_backend or b
        if type(y) is not ob.array_type:
            y = ob.xp.asarray(y)
        out = _new_tensor(y, ob)
        if anomaly:
            _check_finite(self, "forward", y, ob)
        if record:
            self.inputs = inputs
            self.seq = next(_creation_order)
            out.requires_grad = True
            out.creator = self
        if _tracer is not None:
            _tracer(self, inputs, out)
        return out

    def forward(self, *xs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, gy):  # pragma: no cover - abstract
        raise NotImplementedError

    def grad_destination(self, i):
        """The array into which ``backward`` may write input ``i``'s gradient, or None.

        When input ``i`` is a leaf whose ``.grad`` is unset and which keeps its gradient in
        preallocated storage (a Parameter held in an optimizer's flat buffer), this returns that
        array and marks the gradient as set: ``backward`` writes the whole gradient into it
        (``xp.dot(..., out=dest)``) and returns None for input ``i``. Otherwise, and always in
        anomaly mode (which checks each returned gradient), it returns None and ``backward``
        returns the gradient as usual. Call it once per input and backward, only for an input
        whose gradient is needed (``needs_input_grad[i]``).
        """
        t = self.inputs[i]
        if t.creator is not None or _config.detect_anomaly_enabled:
            return None
        return t._take_grad_storage()

    @property
    def name(self) -> str:
        return type(self).__name__

    def release(self) -> None:
        """Free what this node saved; a second backward through it then raises."""
        self.__dict__.clear()
        self.released = True


def _device_mismatch(fn, inputs):
    where = ", ".join(f"input {i}: {tuple(t.shape)} {t.dtype} on {t.device}" for i, t in enumerate(inputs))
    raise DeviceError(f"{fn.name}: tensors on different devices ({where}); move them with "
                      f".to(device) first")


def _reraise_oom(exc, backend, fn, phase, inputs=None):
    shapes = ""
    if inputs:
        shapes = " (inputs " + ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs) + ")"
    err = _config.out_of_memory(exc, backend, f"{fn.name} {phase}{shapes}")
    if err is not None:
        raise err from exc


def _check_finite(fn, phase, arr, backend):
    if arr is None or arr.dtype.kind != "f":
        return
    xp = backend.xp
    if not bool(xp.isfinite(arr).all()):
        kind = "NaN" if bool(xp.isnan(arr).any()) else "inf"
        raise AnomalyError(f"anomaly detected: {fn.name} produced {kind} in its {phase} pass "
                           f"({'output' if phase == 'forward' else 'gradient'} shape {tuple(arr.shape)})")


_new_tensor = None  # set by nnx.tensor (avoids an import cycle)
_tensor_type = None  # nnx.Tensor, set by nnx.tensor


# ---------------------------------------------------------------------- PyTorch-style Functions
class FunctionCtx(Function):
    """The ``ctx`` of a PyTorch-style Function and its node in the graph.

    ``forward(ctx, *args)`` and ``backward(ctx, *grads)`` of the user's class run on Tensors
    with grad mode off; ``ctx.save_for_backward(*tensors)``/``ctx.saved_tensors``,
    ``ctx.needs_input_grad`` (one bool per argument, False for non-tensors) and
    ``ctx.mark_non_differentiable(*outputs)`` work as in PyTorch. One output tensor per call.
    """

    def __init__(self, fn_class, args):
        self.fn_class = fn_class
        self.needs_input_grad = tuple(isinstance(a, _tensor_type) and a.requires_grad for a in args)
        self.arg_is_tensor = [isinstance(a, _tensor_type) for a in args]
        self.saved_tensors = ()
        self.non_differentiable = ()
        self.materialize_grads = True

    @property
    def name(self) -> str:
        return f"{self.fn_class.__name__}Backward"

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *outputs):
        self.non_differentiable = tuple(id(o) for o in outputs)

    def set_materialize_grads(self, value: bool):
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors):  # in-place outputs: nothing to track without views
        pass

    def backward(self, gy):
        g = _new_tensor(gy, self.out_backend)
        prev = _state.grad_enabled
        _state.grad_enabled = False
        try:
            grads = self.fn_class.backward(self, g)
        finally:
            _state.grad_enabled = prev
        if not isinstance(grads, tuple):
            grads = (grads,)
        n_args = len(self.arg_is_tensor)
        if len(grads) < n_args:
            raise GraphError(f"{self.name}: backward returned {len(grads)} gradient(s) for "
                             f"{n_args} forward argument(s); return one per argument (None for "
                             f"non-tensor arguments)")
        out = []
        for is_t, gx in zip(self.arg_is_tensor, grads):
            if not is_t:
                continue
            if gx is not None:
                t = self.inputs[len(out)]
                gx = gx.data if isinstance(gx, _tensor_type) else t._backend.xp.asarray(gx)
                if tuple(gx.shape) != tuple(t.shape):
                    raise GraphError(f"{self.name}: backward returned a gradient of shape "
                                     f"{tuple(gx.shape)} for input {len(out)} of shape {t.shape}")
                if gx.dtype != t.dtype:
                    gx = gx.astype(t.dtype)
            out.append(gx)
        return out


def _torch_style_apply(cls, *args, **kwargs):
    """``F.apply(*args)`` of a PyTorch-style Function ``F`` (see ``FunctionCtx``)."""
    ctx = FunctionCtx(cls, args)
    prev = _state.grad_enabled
    _state.grad_enabled = False
    try:
        out = cls.forward(ctx, *args, **kwargs)
    finally:
        _state.grad_enabled = prev
    if not isinstance(out, _tensor_type):
        raise GraphError(f"{cls.__name__}.forward must return one nnx Tensor (got "
                         f"{type(out).__name__}); nnx's Functions have one output")
    inputs = tuple(a for a in args if isinstance(a, _tensor_type))
    result = _new_tensor(out.data, out._backend)
    if prev and True in ctx.needs_input_grad and id(out) not in ctx.non_differentiable \
            and out.data.dtype.kind == "f":
        ctx.inputs = inputs
        ctx.out_backend = out._backend
        ctx.seq = next(_creation_order)
        result.requires_grad = True
        result.creator = ctx
    else:
        ctx.release()
    if _tracer is not None:  # the user's class: its ctx may be released already
        _tracer(cls, inputs, result)
    return result


def backward(root, grad=None, retain_graph=False):
    """Backpropagate from ``root`` (a Tensor), accumulating ``.grad`` of the leaves."""
    if not root.requires_grad:
        raise GraphError("backward(): the tensor does not require grad and has no grad_fn "
                         "(was it created under no_grad, or from tensors without requires_grad?)")
    b = root._backend
    unit = grad is None
    if unit:
        if root.data.size != 1:
            raise GraphError(f"backward(): grad can be implicitly created only for a scalar output, "
                             f"got shape {tuple(root.shape)}; pass a gradient argument")
        shape, dt = root.data.shape, root.data.dtype
        seed = b.xp.ones(shape, dtype=dt) if shape else b.xp.asarray(1.0, dtype=dt)
    else:
        seed = grad.data if hasattr(grad, "_backend") else b.asarray(grad, dtype=root.data.dtype)
        if tuple(seed.shape) != tuple(root.shape):
            raise GraphError(f"backward(): gradient of shape {tuple(seed.shape)} given for a tensor of "
                             f"shape {tuple(root.shape)}")
    top = root.creator
    if top is None:
        root._accumulate(seed)
        for hook in backward_end_hooks:
            hook()
        return
    if top.released:
        raise GraphError(f"backward(): trying to backward through the graph a second time "
                         f"({top.name}'s saved values were freed by the first backward); "
                         f"use backward(retain_graph=True) the first time")

    # Process nodes in decreasing creation number: every consumer of a node was created after
    # it, so all gradient contributions to a node have arrived when it is popped (a reverse
    # topological order, without a separate sort; no recursion, so deep graphs are fine).
    anomaly = _config.detect_anomaly_enabled
    grads = {top: seed}
    heap = [(-top.seq, top)]
    absorbed = []
    top.unit_grad = unit
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        fn = pop(heap)[1]
        gy = grads.pop(fn)
        try:
            if anomaly:
                with np.errstate(all="ignore"):  # see Function.apply
                    gxs = fn.backward(gy)
            else:
                gxs = fn.backward(gy)
        except MemoryError as e:
            _reraise_oom(e, getattr(fn, "backend", b), fn, "backward", fn.inputs)
            raise
        fn.unit_grad = False
        for t, gx in zip(fn.inputs, gxs):
            if gx is None or not t.requires_grad:
                continue
            if anomaly:
                # gx lives on the input's device, which differs from the root's after a .to()
                _check_finite(fn, "backward", gx, backends.backend_of(gx))
            c = t.creator
            if c is None:
                t._accumulate(gx)
            elif c in grads:
                grads[c] = grads[c] + gx
            else:
                if c.released:
                    raise GraphError(f"backward(): {c.name} was freed by an earlier backward; "
                                     f"use backward(retain_graph=True) the first time")
                grads[c] = gx
                push(heap, (-c.seq, c))
        if not retain_graph:
            if fn.absorbed:
                absorbed += fn.absorbed
            fn.release()
    for node in absorbed:  # nodes a fused node ran the backward of: freed with the graph
        node.release()
    for hook in backward_end_hooks:
        hook()
