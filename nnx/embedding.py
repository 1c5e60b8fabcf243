"""``embedding``: rows of a weight matrix picked by integer indices, as one graph node.

Forward: a gather (``take`` along axis 0). Backward: a scatter-add of the incoming gradient into
a zero matrix of the weight's shape (``xp.add.at``: repeated indices add up; CuPy does it with
atomics), the ``padding_idx`` row left at zero. An index outside ``[0, num_embeddings)`` raises
``LabelError``: at once on the CPU; on a device the gather reads a clipped index and a device
flag raises the error at the next host read of the output, so the step never waits.
"""
from __future__ import annotations

from .autograd import Function
from .errors import DTypeError, LabelError, ShapeError
from .tensor import Tensor, _wrap, as_tensor

__all__ = ["Embedding", "embedding", "check_padding_idx"]


class Embedding(Function):
    """``y = weight[idx]``. Inputs: idx (*) integer, weight (V, D). Output (*, D), weight's dtype.

    ``padding_idx`` (a non-negative int or None): that row gets no gradient.
    """

    def __init__(self, padding_idx):
        self.padding_idx = padding_idx

    @property
    def name(self) -> str:
        return "Embedding"

    def forward(self, idx, weight):
        if self.needs_input_grad is not None:
            self.idx, self.wshape = idx, weight.shape
        return self.xp.take(weight, idx, axis=0)

    def backward(self, gy):
        if not self.needs_input_grad[1]:
            return None, None
        v, d = self.wshape
        gw = self.xp.zeros((v, d), dtype=gy.dtype)
        self.xp.add.at(gw, self.idx.reshape(-1), gy.reshape(-1, d))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return None, gw


def check_padding_idx(padding_idx, num_embeddings, name="embedding"):
    """``padding_idx`` as a non-negative row number (a negative one counts from the end, as in
    PyTorch), or None; ValueError outside ``[-num_embeddings, num_embeddings)``."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) \
            or not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"{name}: padding_idx must be an int within [-{num_embeddings}, "
                         f"{num_embeddings}) (num_embeddings), got {padding_idx!r}")
    return padding_idx % num_embeddings


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False, layer=None):
    """Rows of ``weight`` at the integer indices ``input``, as ``torch.nn.functional.embedding``.

    Args:
        input: integer tensor of any shape, each value in ``[0, num_embeddings)``.
        weight: (num_embeddings, embedding_dim).
        padding_idx: a row that receives no gradient (negative: counted from the end).
        max_norm, scale_grad_by_freq, sparse: not supported (a clear error when set).
        layer: the layer's name for error messages.

    Shape: input (*) -> output (*, embedding_dim), weight's dtype.
    """
    name = layer or "embedding"
    if max_norm is not None:
        raise NotImplementedError(f"{name}: max_norm is not supported by nnx (it renormalizes "
                                  f"weight rows in place); leave it None")
    if scale_grad_by_freq or sparse:
        raise NotImplementedError(f"{name}: scale_grad_by_freq and sparse gradients are not "
                                  f"supported by nnx; leave them False")
    if not isinstance(weight, Tensor):
        weight = as_tensor(weight)
    if weight.ndim != 2:
        raise ShapeError(f"{name}: weight must be 2-D (num_embeddings, embedding_dim), got "
                         f"{weight.shape}")
    if not isinstance(input, Tensor):
        input = as_tensor(input, like=weight)
    if input.data.dtype.kind not in "iu":
        raise DTypeError(f"{name}: indices must be an integer tensor, got dtype {input.dtype}")
    v = weight.shape[0]
    pad = check_padding_idx(padding_idx, v, name)
    idx = input.data
    be = input._backend
    make_error = None
    if idx.size:
        if be.name == "numpy":
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= v:
                raise LabelError(f"{name}: index out of range: indices must lie in [0, {v}) "
                                 f"(num_embeddings), got values in [{lo}, {hi}]")
        else:
            bad = ((idx < 0) | (idx >= v)).any()
            safe = be.xp.clip(idx, 0, v - 1)  # never gather outside the weight
            input = _wrap(safe, be)

            def make_error():
                return LabelError(f"{name}: index out of range: indices must lie in [0, {v}) "
                                  f"(num_embeddings)")
    out = Embedding(pad).apply(input, weight)
    if make_error is not None:
        out._checks = (out._checks or []) + [(bad, make_error)]
    return out
