"""``nnx.callbacks``: the callbacks of ``Sequential.fit``, kept at this path for
``from nnx.callbacks import EarlyStopping``; they live in ``nnx.keras.callbacks``."""
from .keras.callbacks import Callback, EarlyStopping, ModelCheckpoint, TerminateOnNaN

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "TerminateOnNaN"]
