"""``nnx.training``: the Keras training API's old home, kept at this path for imports such as
``from nnx.training import History, load_model``; it lives in ``nnx.keras`` now.

NOTE: ``RESIDENT_BYTES`` here is a copy of the value; to change the streaming threshold, set
``nnx.keras.data.RESIDENT_BYTES``.
"""
from .keras.data import RESIDENT_BYTES
from .keras.history import History
from .keras.model import Sequential
from .keras.saving import load_checkpoint, load_model

__all__ = ["History", "Sequential", "load_model", "load_checkpoint", "RESIDENT_BYTES"]
