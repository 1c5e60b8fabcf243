"""``History``: what ``Sequential.fit`` returns."""
from __future__ import annotations

__all__ = ["History"]


class History:
    """What ``fit`` returns (as Keras's ``History``).

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], ...}``, one float per
            epoch for the loss, each metric and, with validation data, their ``val_`` forms.
        epoch: the epoch indices run (0-based, as Keras).
        params: ``{"epochs", "steps", "batch_size", "samples", "verbose"}``.
        epoch_seconds: wall time of each epoch (including validation).
        stopped_epoch: the 0-based epoch after which training stopped early, or None when
            it ran all its epochs.
        stop_reason: None, ``"nan"`` (a NaN or inf loss, see ``TerminateOnNaN``),
            ``"early_stopping"``, or ``"callback"`` (another callback set
            ``model.stop_training``).
        stop_message: a sentence saying where and why training stopped, or None.
        nan_batch: with ``stop_reason == "nan"``, the 0-based index of the first batch of the
            stopped epoch whose loss was not finite.
        model: the model trained.
    """

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}
        self.epoch_seconds = []
        self.stopped_epoch = None
        self.stop_reason = None
        self.stop_message = None
        self.nan_batch = None
        self.model = None

    def __repr__(self):
        keys = ", ".join(self.history)
        s = f"History(epochs={len(self.epoch)}, keys=[{keys}]"
        if self.stop_reason:
            s += f", stopped_epoch={self.stopped_epoch}, stop_reason={self.stop_reason!r}"
        return s + ")"
