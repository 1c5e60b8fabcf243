"""``Embedding``: a lookup table of learnable vectors, as ``torch.nn.Embedding``."""
from __future__ import annotations

from .. import _config
from .. import embedding as E
from ..errors import ShapeError
from . import init
from .config import class_name, config_arg
from .module import Module, Parameter

__all__ = ["Embedding"]


class Embedding(Module):
    """Rows of ``weight`` picked by integer indices: ``y = weight[x]``.

    Args:
        num_embeddings: the number of rows (the index range is ``[0, num_embeddings)``).
        embedding_dim: the size of each row.
        padding_idx: a row initialized to zeros that receives no gradient (negative: counted
            from the end, as in PyTorch). Default: None.
        max_norm, scale_grad_by_freq, sparse: not supported (a clear error when set).
        _weight: an initial (num_embeddings, embedding_dim) weight instead of N(0, 1).
        _freeze: do not train the weight (``requires_grad=False``).

    Shape: input (*) integer -> output (*, embedding_dim).

    Attributes:
        weight: (num_embeddings, embedding_dim), initialized from N(0, 1) (the padding row 0).

    Example:
        >>> emb = nnx.nn.Embedding(10, 3, padding_idx=0)
        >>> emb(nnx.tensor([[1, 2], [0, 9]])).shape
        (2, 2, 3)
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, _weight=None,
                 _freeze=False, device=None, dtype=None):
        super().__init__()
        for label, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Embedding: {label} must be a positive int, got {v!r}")
        if max_norm is not None or scale_grad_by_freq or sparse:
            E.embedding(None, None, max_norm=max_norm, scale_grad_by_freq=scale_grad_by_freq,
                        sparse=sparse, layer="Embedding")  # raises the clear error
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = E.check_padding_idx(padding_idx, self.num_embeddings, "Embedding")
        self.max_norm, self.norm_type = None, float(norm_type)
        self.scale_grad_by_freq, self.sparse = False, False
        from ..tensor import _wrap, as_tensor

        shape = (self.num_embeddings, self.embedding_dim)
        b = _config.backend_for(device)
        dt = _config.to_dtype(dtype) or _config.get_default_dtype()
        if _weight is None:
            self.weight = Parameter(_wrap(b.xp.empty(shape, dtype=dt), b))
            self.reset_parameters()
        else:
            w = as_tensor(_weight)
            if tuple(w.shape) != shape:
                raise ShapeError(f"Embedding: _weight of shape {w.shape} does not match "
                                 f"{shape} (num_embeddings, embedding_dim)")
            self.weight = Parameter(w)
        self.weight.requires_grad = not _freeze

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False, sparse=False):
        """An ``Embedding`` holding ``embeddings`` (2-D), frozen unless ``freeze=False``."""
        rows, cols = embeddings.shape
        return cls(rows, cols, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                   _weight=embeddings, _freeze=freeze)

    def reset_parameters(self):
        init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self):
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, x):
        return E.embedding(x, self.weight, self.padding_idx,
                           layer=f"Embedding({self.num_embeddings}, {self.embedding_dim})")

    def output_shape(self, input_shape):
        """``input_shape + (embedding_dim,)``; None for an unknown input."""
        return None if input_shape is None else tuple(input_shape) + (self.embedding_dim,)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"

    def get_config(self):
        """``{"class": "Embedding", "num_embeddings": int, "embedding_dim": int,
        "padding_idx": int or None}``."""
        return {"class": class_name(self), "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "padding_idx": self.padding_idx}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """A fresh ``Embedding`` (N(0, 1) rows) from ``get_config``'s dict."""
        return cls(config_arg(config, "num_embeddings", (int,), required=True),
                   config_arg(config, "embedding_dim", (int,), required=True),
                   padding_idx=config_arg(config, "padding_idx", (int, type(None)), None),
                   device=device, dtype=dtype)
