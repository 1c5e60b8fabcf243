"""``Input``: Keras's ``keras.Input(shape)``, the per-sample shape a model takes.

``Sequential([Input((3,)), Dense(4), Dense(1)])`` builds the first ``Dense`` for 3 inputs. An
``Input`` is a layer of its own here (Keras makes it an ``InputLayer`` that ``model.layers``
leaves out): it has no parameters (nothing in ``state_dict``; the layers after it keep their
positions, so the first Dense's weight is ``"1.weight"``), its forward returns its input
unchanged after checking the per-sample shape, and it reports that shape to the layers after
it (``output_shape`` / ``output_features``).
"""
from __future__ import annotations

from ..errors import CheckpointError, ShapeError
from .config import class_name, config_arg
from .module import Module

__all__ = ["Input"]


def _as_shape(shape):
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"Input: shape must be a tuple of ints such as (3,), got {shape!r}") \
            from None
    if not shape or any(d is not None and (isinstance(d, bool) or not isinstance(d, int)
                                           or d < 1) for d in shape):
        raise ValueError(f"Input: shape must be a non-empty tuple of positive ints (None for "
                         f"an axis of any size), without the batch axis, e.g. (3,); got {shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


class Input(Module):
    """The per-sample input shape of a model, as ``keras.Input(shape)``.

    Args:
        shape: the shape of one sample, without the batch axis: ``(3,)`` for rows of 3
            features (an int ``n`` means ``(n,)``); an entry may be None (any size).

    Shape:
        input (N, *shape) -> output (N, *shape), unchanged. A batch of another per-sample
        shape is a ``ShapeError``.

    Example:
        >>> model = nn.Sequential([nn.Input((3,)), nn.Dense(4), nn.Dense(1)])
        >>> model.count_params()
        21
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = _as_shape(shape)

    def forward(self, x):
        got = tuple(x.shape[1:])
        if len(got) != len(self.shape) or any(w is not None and g != w
                                              for g, w in zip(got, self.shape)):
            want = ", ".join("None" if d is None else str(d) for d in self.shape)
            raise ShapeError(f"Input(shape={self.shape}) got input of shape {tuple(x.shape)} "
                             f"(expected (N, {want}))")
        return x

    def output_shape(self, input_shape):
        """This Input's shape, whatever came before."""
        return self.shape

    def output_features(self, in_features):
        """The last entry of this Input's shape (None when that axis may have any size)."""
        return self.shape[-1]

    def get_config(self):
        """``{"class": "Input", "shape": [d, ...]}``."""
        return {"class": class_name(self), "shape": list(self.shape)}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        shape = config_arg(config, "shape", (list, tuple), required=True)
        try:
            return cls(shape)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"bad layer config {config!r}: {e}") from None

    def extra_repr(self):
        return f"shape={self.shape}"
