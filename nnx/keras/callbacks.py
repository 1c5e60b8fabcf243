"""Callbacks for ``Sequential.fit``, with Keras's names and arguments.

A callback sees ``on_train_begin``, ``on_epoch_begin``, ``on_epoch_end`` and ``on_train_end``;
``logs`` holds the epoch's loss, metrics and ``val_*`` values as Python floats. There are no
per-batch hooks: ``fit`` reads the device once per epoch, so per-batch values do not exist on
the host. A callback stops training by setting ``self.model.stop_training = True`` (and may
say why in ``self.model.stop_reason``), as in Keras.
"""
from __future__ import annotations

import csv
import math
import os
import warnings

import numpy as np

from .. import distributed, serialization
from .paths import check_save_path

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint",
           "ReduceLROnPlateau", "TerminateOnNaN"]


class Callback:
    """Base class; override the hooks you need. ``self.model`` is the model being trained and
    ``self.params`` the run's settings (``epochs``, ``steps``, ``batch_size``, ...)."""

    model = None
    params = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass


class TerminateOnNaN(Callback):
    """Stop training when the loss becomes NaN or inf (on by default in ``fit``).

    The check runs at the end of each epoch, on the epoch's loss (a NaN in any batch makes the
    epoch's sum NaN); the first bad batch is then found from the per-batch losses kept on the
    device, so no batch waits on a host sync. Warns with a ``RuntimeWarning`` naming the epoch
    and the batch, whatever ``verbose`` is, and records ``history.stop_reason = "nan"``.
    """

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss):
            return
        model = self.model
        batch = model._first_nonfinite_batch() if hasattr(model, "_first_nonfinite_batch") \
            else None
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        where = f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")
        if batch is not None:
            where += f", batch {batch + 1}" + (f"/{steps}" if steps else "")
        kind = "NaN" if math.isnan(loss) else "inf"
        msg = (f"nnx: the loss became {kind} at {where}; training stopped (TerminateOnNaN). "
               f"The weights are no longer finite: lower the learning rate, check the inputs "
               f"for NaN/inf, or restore a checkpoint")
        history = getattr(model, "history", None)
        if history is not None:
            history.stop_message = msg
            history.nan_batch = batch
        model.stop_training = True
        model.stop_reason = "nan"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _improvement(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        m = monitor.lower()
        mode = "max" if ("acc" in m or "auc" in m) else "min"
    return mode


class EarlyStopping(Callback):
    """Stop training when a monitored value has stopped improving.

    Args:
        monitor: a key of the epoch logs. Default: ``"val_loss"``.
        min_delta: a change smaller than this does not count as an improvement.
        patience: epochs without improvement after which training stops. Default: 0.
        verbose: 1 prints a line when it stops.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracies, min otherwise).
        baseline: training stops if the value does not beat this within ``patience`` epochs.
        restore_best_weights: put back the weights of the best epoch when training ends.

    Attributes:
        stopped_epoch: the 0-based epoch at which it stopped training (0 if it did not).
        best, best_epoch: the best value seen and its epoch.

    NOTE: Keras restores the best weights only when patience runs out; nnx restores them at
    the end of training in every case (also when the epochs run out first), since the point of
    ``restore_best_weights`` is to end with the best model.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False):
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = _improvement(mode, monitor)
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self._warned = False

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.best_weights = None
        self._last_epoch = None

    def _better(self, current, reference):
        if self.mode == "min":
            return current < reference - self.min_delta
        return current > reference + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        current = logs.get(self.monitor)
        self._last_epoch = epoch
        if current is None:
            if not self._warned:
                self._warned = True
                warnings.warn(f"EarlyStopping: monitored value {self.monitor!r} is not in the "
                              f"logs (available: {', '.join(logs)}); pass validation data or "
                              f"monitor another key", RuntimeWarning, stacklevel=3)
            return
        self.wait += 1
        if self._better(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                # Device-side copies: no host transfer at each improvement.
                self.best_weights = [p.data.copy() for p in self.model.parameters()]
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self.model.stop_reason = "early_stopping"
            history = getattr(self.model, "history", None)
            if history is not None:
                history.stop_message = (f"early stopping at epoch {epoch + 1}: {self.monitor} "
                                        f"did not improve for {self.wait} epoch(s); best "
                                        f"{self.best:.6g} at epoch {(self.best_epoch or 0) + 1}")

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None \
                and self.best_epoch != self._last_epoch:
            for p, w in zip(self.model.parameters(), self.best_weights):
                p.data[...] = w  # in place: the optimizer's flat buffers stay valid
            if self.verbose:
                print(f"Restoring the weights of the best epoch ({self.best_epoch + 1}).")
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")


class ModelCheckpoint(Callback):
    """Save the model after an epoch, through ``nnx.save`` (atomic, never pickled).

    Args:
        filepath: where to write; may hold ``str.format`` fields filled from the epoch
            (1-based) and the logs, e.g. ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``; it must
            end in ``.npz`` or ``.nnx`` (nnx's format; ValueError otherwise, at construction).
        monitor: the logs key ``save_best_only`` compares. Default: ``"val_loss"``.
        verbose: 1 prints a line at each save.
        save_best_only: write only when ``monitor`` improves on the best so far.
        save_weights_only: write only ``model.state_dict()`` (load it back with
            ``model.load_state_dict(nnx.load(path))``); otherwise the file also holds the
            architecture as data and loads with ``nnx.load_model(path)`` (when every layer is
            one of nnx's; else the weights alone are written).
        mode: ``"min"``, ``"max"`` or ``"auto"``.

    Under ``nnx.distributed`` with several processes only rank 0 writes (the replicas hold the
    same weights).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto"):
        self.filepath = check_save_path(filepath, "ModelCheckpoint")
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.mode = _improvement(mode, monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self._warned = False
        self.last_saved = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"ModelCheckpoint: monitored value {self.monitor!r} is not in "
                                  f"the logs (available: {', '.join(logs)}); nothing is saved",
                                  RuntimeWarning, stacklevel=3)
                return
            better = current < self.best if self.mode == "min" else current > self.best
            if not better or not np.isfinite(current):
                return
            self.best = current
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if distributed.rank() != 0:  # data-parallel replicas are identical: rank 0 writes
            return
        self._save(path, epoch, logs)
        self.last_saved = path
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")

    def _save(self, path, epoch, logs):
        model = self.model
        if not self.save_weights_only and hasattr(model, "save"):
            try:
                model.get_config()
            except ValueError:
                pass  # a layer nnx cannot describe: fall back to the weights
            else:
                model.save(path, extra={"epoch": epoch + 1, "logs": logs})
                return
        serialization.save(model.state_dict(), path)


def _get_lr(model):
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(opt, "param_groups", None):
        raise ValueError("this callback needs a compiled model whose optimizer has param_groups")
    return float(opt.param_groups[0]["lr"])


def _set_lr(model, lr):
    """Set every parameter group's lr (a Python float: nothing is recompiled or synced)."""
    for g in model.optimizer.param_groups:
        g["lr"] = float(lr)


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (``epoch``
    0-based, ``lr`` the current rate), in every parameter group; the epoch's logs get
    ``"learning_rate"`` (as Keras 3). ``verbose=1`` prints the new rate."""

    def __init__(self, schedule, verbose=0):
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.schedule(epoch, _get_lr(self.model))
        if not isinstance(lr, (float, int, np.floating, np.integer)):
            raise ValueError(f'The output of the "schedule" function should be a float, got {lr!r}')
        _set_lr(self.model, lr)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _get_lr(self.model)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved (by more than
    ``min_delta``) for ``patience`` epochs, then wait ``cooldown`` epochs; never below
    ``min_lr``. Keras's rule and defaults; the epoch's logs get ``"learning_rate"``."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0, got {factor}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.min_delta = verbose, float(min_delta)
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.mode = _improvement(mode, monitor)
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, logs=None):
        self._reset()

    def _better(self, current):
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _get_lr(self.model)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: the monitored {self.monitor!r} is not in the logs "
                          f"(available: {', '.join(logs)})", RuntimeWarning, stacklevel=2)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = _get_lr(self.model)
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    _set_lr(self.model, new)
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Write each epoch's logs as a row of a CSV file: ``epoch`` then the log keys in sorted
    order, as Keras. ``append=True`` adds to an existing file (no second header)."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.sep, self.append = os.fspath(filename), separator, bool(append)
        self.keys = None
        self.writer = None
        self._file = None

    def on_train_begin(self, logs=None):
        if distributed.rank() != 0:  # under nnx.distributed, rank 0 writes the file
            self._file = None
            return
        self._header = not (self.append and os.path.exists(self.filename)
                            and os.path.getsize(self.filename) > 0)
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self.keys, self.writer = None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._file is None:
            return
        if self.keys is None:
            self.keys = sorted(logs)
            self.writer = csv.DictWriter(self._file, fieldnames=["epoch"] + self.keys,
                                         delimiter=self.sep)
            if self._header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, logs.get(k, "NA")) for k in self.keys)
        self.writer.writerow(row)
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None
