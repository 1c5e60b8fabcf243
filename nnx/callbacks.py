"""``nnx.callbacks``: the callbacks of ``Sequential.fit``, kept at this path for
``from nnx.callbacks import EarlyStopping``; they live in ``nnx.keras.callbacks``."""
from .keras.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler,
                              ModelCheckpoint, ReduceLROnPlateau, TerminateOnNaN)

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint",
           "ReduceLROnPlateau", "TerminateOnNaN"]
