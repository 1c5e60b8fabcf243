"""``nnx.keras.Sequential``: Keras's model API on PyTorch's ``Sequential`` container.

The lecture's Keras listing ports line for line::

    model = nn.Sequential()
    model.add(nn.Dense(2, input_dim=2, activation="sigmoid"))
    model.add(nn.Dense(1, activation="sigmoid"))
    model.compile(loss="binary_crossentropy", optimizer="sgd", metrics=["accuracy"])
    model.fit(trainX, trainY, epochs=50000, batch_size=4, verbose=0)
    print(model.evaluate(trainX, trainY)[1])
    print(model.predict(trainX, batch_size=4))

The pieces: ``compiling`` (what ``compile`` decides), ``losses``, ``metrics``, ``heads`` (the
fused logits head), ``data`` (batch sources: on the device, or streamed), ``fitting`` (the
epoch loop, one host sync per epoch), ``saving`` (``load_model``).
"""
from __future__ import annotations

import numpy as np

from .. import _config
from .. import serialization
from ..errors import CheckpointError, ShapeError
from ..nn.config import layer_from_config
from ..nn.container import Sequential as _Container
from ..nn.module import Module
from ..tensor import _wrap
from . import fitting
from .compiling import make_setup
from .data import (as_backend_array, batch_source, is_loader, predict_batches, split_last,
                   to_host)
from .heads import logits_head
from ..nn.inputs import Input
from .layers import Dense, weight_slots
from .paths import check_save_path
from .losses import loss_for, target_kind
from .metrics import metrics_for

__all__ = ["Sequential", "FORMAT"]


def _builds_from_shape(layer):
    """A Keras layer that takes its size from the per-sample shape before it (Conv2D,
    BatchNormalization), as Dense takes ``input_dim``."""
    return hasattr(layer, "build_from_shape") and hasattr(layer, "built")

#: The "format" entry of a file written by ``Sequential.save``.
FORMAT = "nnx.sequential"


class _ModelParameters:
    """``Sequential.parameters()``: an iterator over the parameters whose ``unbuilt_layers``
    names the layers that have none yet (read by ``nnx.optim.Optimizer``)."""

    def __init__(self, params, unbuilt_layers):
        self._it = iter(params)
        self.unbuilt_layers = unbuilt_layers

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)


class Sequential(_Container):
    """A stack of layers with Keras's model API: ``add``, ``compile``, ``fit``, ``evaluate``,
    ``predict``, ``summary``, ``save`` (reload with ``nnx.load_model``), ``get_weights`` /
    ``set_weights``, ``get_config`` / ``from_config``, ``layers``, ``count_params``.

    It is ``nnx.nn.container.Sequential`` (children "0", "1", ..., the fused forward, PyTorch's
    ``state_dict`` keys), and ``nnx.nn.Sequential`` names it. ``Sequential(l0, l1, ...)``,
    ``Sequential([l0, l1, ...])`` (Keras's list form) and ``add`` give a ``Dense`` without
    ``input_dim`` its input size from the ``output_shape`` of the layers before it (the last
    entry of the per-sample shape they output; ``Flatten(input_shape=(28, 28))`` then
    ``Dense(128)`` builds the Dense for 784 inputs).

    Shape:
        input (N, in_features) -> output (N, out_features) for a stack of Dense layers;
        inputs are converted to the model's dtype (that of its parameters) by ``fit``,
        ``evaluate`` and ``predict``.

    Example:
        >>> model = nn.Sequential(nn.Dense(64, input_dim=64, activation="relu"),
        ...                       nn.Dense(10, activation="softmax"))
        >>> model.count_params()
        4810
    """

    optimizer = None  # set by compile()
    history = None  # the History of the last fit()

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        super().__init__(*layers)
        self._build_pending(strict=False)

    # ------------------------------------------------------------------ building
    def add(self, layer):
        """Append ``layer`` (Keras's ``model.add``). A ``Dense`` without ``input_dim`` takes its
        input size from the layer before it; as the first layer it needs ``input_dim``.
        Adding a layer after ``compile`` requires compiling again."""
        if not isinstance(layer, Module):
            raise TypeError(f"add: expected an nnx.nn layer (Module), got {type(layer).__name__}")
        shape = self.output_shape(None)
        prev = shape[-1] if shape else None
        if isinstance(layer, Dense):
            if not layer.built:
                first = (f"Dense({layer.units}) is the first layer and has no input size: give "
                         f"it input_dim=<number of input features>, e.g. "
                         f"nn.Dense({layer.units}, input_dim=2)")
                self._build_dense(layer, prev, first if len(self) == 0 else
                                  f"Dense({layer.units}): cannot infer its input size from the "
                                  f"layer before it ({type(self[-1]).__name__}, whose "
                                  f"output_shape() does not tell it); give input_dim=...")
            elif prev is not None and layer.in_features != prev:
                raise ShapeError(f"Dense({layer.units}, input_dim={layer.in_features}) does not "
                                 f"fit after a layer with {prev} outputs")
        elif _builds_from_shape(layer) and not layer.built:  # Conv2D, BatchNormalization
            self._build_from_shape(layer, shape)
        self.append(layer)
        object.__setattr__(self, "_keras", None)
        return self

    def _build_pending(self, strict=True):
        """Give each unbuilt Dense its input size from the ``output_shape`` of the layers
        before it, as ``add`` does. ``strict``: a Dense whose input size cannot be told is an
        error (``compile``); otherwise it is left for later (construction)."""
        shape = None
        for i, m in enumerate(self):
            feats = shape[-1] if shape else None
            if isinstance(m, Dense) and not m.built and (strict or feats is not None):
                self._build_dense(m, feats, f"Dense({m.units}) at position {i} has no input size "
                                            f"and none can be inferred from the layers before "
                                            f"it; give it input_dim=...")
            elif _builds_from_shape(m) and not m.built and (strict or shape is not None):
                self._build_from_shape(m, shape)
            shape = m.output_shape(shape)

    def _build_dense(self, layer, in_features, error):
        """Build the unbuilt Dense ``layer`` for ``in_features`` inputs, on the device and in
        the dtype of the model's parameters (the defaults for a model without any);
        ``ValueError(error)`` when ``in_features`` is None (not known)."""
        if in_features is None:
            raise ValueError(error)
        p = next(iter(self.parameters()), None)
        layer.build(in_features, device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None else None)

    def _build_from_shape(self, layer, shape):
        """Build a Conv2D / BatchNormalization for the per-sample ``shape`` the layers before
        it output, on the device and in the dtype of the model's parameters."""
        p = next(iter(self.parameters()), None)
        layer.build_from_shape(shape, device=p.device if p is not None else None,
                               dtype=p.dtype if p is not None else None)

    @property
    def layers(self):
        """The layers, in order (Keras's ``model.layers``; an ``Input`` is left out, as Keras
        leaves out its input layer, though it is a child here, "0", with no parameters)."""
        return [m for m in self if not isinstance(m, Input)]

    def parameters(self, recurse=True):
        """The parameters (PyTorch's ``model.parameters()``), as an iterator that also tells
        an ``nnx.optim`` optimizer which layers have no parameters yet (a ``Dense`` whose input
        size is not known): the optimizer refuses them, since those layers would never train.
        """
        return _ModelParameters(super().parameters(recurse), self._unbuilt_layers())

    def _unbuilt_layers(self):
        """``"<name> Dense(<units>)"`` for each Dense of the model that is not built yet."""
        return [f"{name} " + (f"Dense({m.units})" if isinstance(m, Dense) else type(m).__name__)
                for name, m in self.named_modules()
                if (isinstance(m, Dense) or _builds_from_shape(m)) and not m.built]

    def count_params(self):
        """The number of parameter values (Keras's ``model.count_params()``)."""
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer=None, loss=None, metrics=None):
        """Configure training (Keras's ``model.compile``).

        Args:
            optimizer: ``"sgd"`` (SGD, lr 0.01, as Keras), ``"adamw"``, ``"rmsprop"``, ``"adagrad"`` (Keras's
                defaults, see ``nnx.keras.compiling``), ``"adam"`` (Adam, lr 0.001,
                eps 1e-7, as Keras; nnx adds eps after the bias correction as PyTorch does),
                or an ``nnx.optim`` optimizer built on ``model.parameters()`` after the model
                is built: it must hold every trainable parameter (ValueError naming the layers
                whose parameters it lacks, which would otherwise never train).
            loss: ``"mse"``, ``"mae"``, ``"binary_crossentropy"``, ``"categorical_crossentropy"``
                (one-hot targets), ``"sparse_categorical_crossentropy"`` (integer labels), or a
                loss module / callable ``f(output, target) -> Tensor`` such as
                ``nn.CrossEntropyLoss()`` (which then sees the model's raw output).
            metrics: a list of ``"accuracy"`` (binary, categorical or sparse, picked from the
                loss as Keras does; binary uses the threshold 0.5), ``"binary_accuracy"``,
                ``"categorical_accuracy"``, ``"sparse_categorical_accuracy"``, ``"mse"``,
                ``"mae"``, or callables ``f(y_true, y_pred)`` on backend arrays returning
                per-sample values.

        NOTE: when the last layer ends in a sigmoid (softmax) and the loss is the binary
        (categorical or sparse) cross-entropy, training and ``evaluate`` compute the loss from
        the pre-activation logits (``binary_cross_entropy_with_logits`` / ``cross_entropy``):
        the same value, but stable and without clipping. Keras on probabilities clips them to
        [1e-7, 1 - 1e-7], so where a prediction is within 1e-7 of 0 or 1 Keras's loss is
        capped (at about 16.1 per sample) and nnx's is not; elsewhere they agree to rounding.
        ``predict`` still returns probabilities.
        """
        self._build_pending()
        params = list(self.parameters())
        if not params:
            raise ValueError("compile: the model has no parameters; add layers first")
        layer_of = {}
        for name, m in self.named_children():
            label = f"{name} {type(m).__name__}" + (f"({m.units})" if isinstance(m, Dense) else "")
            for p in m.parameters():
                layer_of.setdefault(id(p), label)
        st = make_setup(params, optimizer, loss, metrics, layer_of)
        self._metrics_for(st, self._logits_head(st)[1])  # validate metric/loss combinations now
        object.__setattr__(self, "_keras", st)
        object.__setattr__(self, "optimizer", st.optimizer)
        return self

    def _setup(self, what):
        st = self.__dict__.get("_keras")
        if st is None:
            raise RuntimeError(f"{what}: compile the model first, e.g. "
                               f"model.compile(loss='binary_crossentropy', optimizer='sgd')")
        return st

    def _logits_head(self, st):
        """``(steps, head)``: see ``nnx.keras.heads.logits_head``."""
        return logits_head(self._plan(), st)

    def _metrics_for(self, st, head):
        return metrics_for(st, head, self._model_backend_dtype()[0])

    def _loss_and_metrics(self, st):
        """``(steps, head, loss function, [(name, metric function)])`` for a pass."""
        steps, head = self._logits_head(st)
        return steps, head, loss_for(st, head), self._metrics_for(st, head)

    # ------------------------------------------------------------------ data
    def _model_backend_dtype(self):
        p = next(iter(self.parameters()), None)
        if p is None:
            return _config.backend_for(None), _config.get_default_dtype()
        return p._backend, p.dtype

    def _batches_for(self, x, y, batch_size, st, what, shuffle=False):
        """A batch source over (x, y) on the model's device (see ``nnx.keras.data``)."""
        be, dt = self._model_backend_dtype()
        return batch_source(x, y, batch_size, target_kind(st), self.output_features(None), be,
                            dt, what, shuffle)

    def _validation_batches(self, validation_data, batch_size, st):
        if validation_data is None:
            return None
        if is_loader(validation_data):
            return self._batches_for(validation_data, None, batch_size, st, "validation_data")
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("fit: validation_data must be (x_val, y_val)")
        return self._batches_for(validation_data[0], validation_data[1], batch_size, st,
                                 "validation_data")

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0,
            terminate_on_nan=True, class_weight=None):
        """Train for ``epochs`` passes over ``(x, y)`` (Keras's ``model.fit``).

        Args:
            x, y: features (N, in_features) and targets (N, out) or labels (N,): NumPy or CuPy
                arrays, nnx Tensors or lists; or an ``nnx.data.DataLoader`` yielding ``(x, y)``
                batches as ``x`` (``y`` left out; its own ``batch_size`` and ``shuffle`` then
                apply, as Keras ignores them for datasets). Features are converted to the
                model's dtype; batches run on the model's device.
            batch_size: samples per gradient step. Default: 32.
            epochs: index of the last epoch (``epochs - initial_epoch`` epochs run).
            verbose: 0 silent; 1 a progress bar per epoch (over batches) with the epoch's loss
                and metrics; 2 one progress bar over all epochs, showing the latest epoch's
                numbers (compact for many short epochs). Bars go to stderr (tqdm).
            callbacks: a list of ``nnx.callbacks.Callback``.
            validation_split: fraction of the data held out for validation, taken from the
                END of ``x`` and ``y`` before shuffling (as Keras).
            validation_data: ``(x_val, y_val)`` (or a DataLoader) evaluated after each epoch;
                overrides ``validation_split``.
            shuffle: reshuffle the training rows before each epoch (the backend's generator,
                so ``nnx.manual_seed`` repeats it). A single batch holding all the data is
                not reshuffled: its mean loss does not depend on the order.
            initial_epoch: epoch to start from (to resume training).
            terminate_on_nan: stop at the end of an epoch whose loss is NaN or inf, with a
                RuntimeWarning naming the epoch and the first bad batch (nnx's
                ``TerminateOnNaN``, on by default; pass False to keep going).
            class_weight: ``{class index: weight}`` (Keras's): each training sample's loss is
                multiplied by its class's weight (1 for classes not listed), summed and divided
                by the batch size; for the named cross-entropy losses. Validation is not
                weighted.

        Returns:
            A :class:`History`.

        NOTE: the loss and metrics are read from the device once per epoch, not per batch, so
        a NaN is noticed at the end of the epoch in which it appears; the rest of that epoch
        runs on NaN weights.

        Under ``nnx.distributed.init()`` with several processes (``mpirun -np N``), ``fit``
        trains data-parallel: each rank fits its shard of the rows, ``batch_size`` rows per
        rank and step, gradients averaged over the ranks; History, callbacks' decisions and
        ``TerminateOnNaN`` see the metrics over all ranks; only rank 0 shows progress, prints
        and writes checkpoints (see ``nnx.keras.fitting``).
        """
        st = self._setup("fit")
        batch_size, verbose = fitting.check_fit_args(batch_size, epochs, verbose,
                                                     validation_split)
        if validation_data is None and validation_split > 0:
            if is_loader(x):
                raise ValueError("fit: validation_split needs arrays, not a DataLoader; pass "
                                 "validation_data instead")
            x, y, validation_data = split_last(x, y, validation_split)
        if is_loader(x):  # under nnx.distributed with several ranks: this rank's shard
            x = fitting.shard(x)
        else:
            x, y = fitting.shard((x, y))
        if validation_data is not None:
            validation_data = fitting.shard(validation_data if is_loader(validation_data)
                                            else tuple(validation_data), pad=False)
        train = self._batches_for(x, y, batch_size, st, "fit", bool(shuffle))
        val = self._validation_batches(validation_data, batch_size, st)
        return fitting.fit_epochs(self, st, train, val, epochs=epochs,
                                  initial_epoch=initial_epoch, batch_size=batch_size,
                                  verbose=verbose, callbacks=callbacks, shuffle=shuffle,
                                  terminate_on_nan=terminate_on_nan, class_weight=class_weight)

    def _first_nonfinite_batch(self):
        """Index of the first batch of the current epoch whose loss is NaN or inf (or None)."""
        st = self.__dict__.get("_keras")
        if st is None:
            return None
        return fitting.distributed_first_bad(
            fitting.first_nonfinite_batch(self._model_backend_dtype()[0], st.batch_losses))

    # ------------------------------------------------------------------ evaluate / predict
    def evaluate(self, x=None, y=None, batch_size=None, verbose=0, return_dict=False):
        """Loss and metrics on ``(x, y)`` (Keras's ``model.evaluate``), in evaluation mode.

        Returns:
            ``[loss, metric, ...]`` as floats, or the loss alone when no metrics were compiled
            (as Keras); a dict ``{"loss": ..., name: ...}`` with ``return_dict=True``.
            ``verbose=1`` prints them on one line (Keras's default is 1; nnx's is 0).
        """
        st = self._setup("evaluate")
        src = self._batches_for(x, y, int(batch_size or 32), st, "evaluate")
        steps, _, lossf, metrics = self._loss_and_metrics(st)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sums, seen, checks = fitting.eval_sums(self, src, steps, lossf,
                                                   [f for _, f in metrics])
            vals = [v / max(seen, 1) for v in fitting.host_floats(src.backend, sums, checks)]
        names = ["loss"] + [label for label, _ in metrics]
        if verbose:
            print(f"{seen} samples - " + " - ".join(f"{k}: {v:.4f}" for k, v in zip(names, vals)))
        if return_dict:
            return dict(zip(names, vals))
        return vals if metrics else vals[0]

    def predict(self, x, batch_size=None, verbose=0):
        """The model's outputs for ``x`` (N, in_features) as a host NumPy array (N, out) in
        the model's dtype (Keras's ``model.predict``), computed in evaluation mode, batch by
        batch on the model's device, copied to the host once. Outputs are what the last layer
        gives (probabilities after a sigmoid/softmax)."""
        be, dt = self._model_backend_dtype()
        bs = int(batch_size or 32)
        if bs < 1:
            raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
        chunks, count = predict_batches(x, be, dt, bs)
        bar = fitting.progress(total=count, desc="Predict", unit="batch") \
            if verbose and count is not None else None
        outs = []
        was = self.training
        self.eval()
        try:
            with _config.no_grad(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for c in chunks:
                    xb = _wrap(as_backend_array(c, be, dt, "x"), be)
                    outs.append(self(xb).data)
                    if bar is not None:
                        bar.update(1)
        finally:
            self.train(was)
            if bar is not None:
                bar.close()
        if not outs:
            raise ValueError("predict: x has no samples")
        out = outs[0] if len(outs) == 1 else be.xp.concatenate(outs, axis=0)
        return np.asarray(be.to_host(out))

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(1, len(x)))

    # ------------------------------------------------------------------ weights
    def get_weights(self):
        """The weights as host NumPy arrays (copies), in Keras's order and layout: for each
        ``Dense``, its kernel ``(in_features, units)`` (the transpose of ``weight``, as
        Keras's ``Dense.kernel``) then its bias ``(units,)``; for each ``Conv2D`` its kernel
        ``(kh, kw, in, filters)`` then its bias; for each ``BatchNormalization`` gamma, beta,
        moving_mean, moving_variance; other layers' parameters (e.g. an ``nn.Linear``, a
        PyTorch layer Keras does not have) as their ``state_dict`` holds them, weight
        ``(out, in)``. ``state_dict()`` keeps PyTorch's layout for every layer."""
        return [get() for _, _, get, _ in weight_slots(self)]

    def set_weights(self, weights):
        """Copy ``weights`` (in ``get_weights``'s order and layout: a Dense's kernel
        ``(in_features, units)``, a Conv2D's ``(kh, kw, in, filters)``, as in Keras) into the
        model, in place; nothing changes unless every shape fits."""
        slots = weight_slots(self)
        weights = list(weights)
        if len(weights) != len(slots):
            raise ValueError(f"set_weights: {len(weights)} arrays given, the model has "
                             f"{len(slots)} weights")
        for i, ((what, want, _, _), w) in enumerate(zip(slots, weights)):
            if tuple(np.shape(w)) != tuple(want):
                what = f" (the {what})" if what.startswith("kernel") else ""
                raise ShapeError(f"set_weights: array {i} has shape {tuple(np.shape(w))}, "
                                 f"weight {i}{what} has {tuple(want)}")
        dt = self._model_backend_dtype()[1]
        for (_, _, _, set_), w in zip(slots, weights):
            set_(np.asarray(to_host(w, dt)))

    # ------------------------------------------------------------------ architecture as data
    def get_config(self):
        """The architecture as a JSON-able dict: ``{"class": "Sequential", "dtype": ...,
        "layers": [{"class": "Dense", "units": 2, "activation": "sigmoid", ...}, ...]}``."""
        _, dt = self._model_backend_dtype()
        return {"class": "Sequential", "dtype": np.dtype(dt).name,
                "layers": super().get_config()["layers"]}

    @classmethod
    def from_config(cls, config, device=None, dtype=None):
        """Build a model from ``get_config``'s dict (fresh weights), adding its layers one by
        one as ``add`` does (so a layer that does not fit is reported)."""
        cls._check_config(config)
        if dtype is not None:
            try:
                dtype = np.dtype(dtype)
            except TypeError:
                raise CheckpointError(f"bad model config: unknown dtype {dtype!r}") from None
            if dtype.kind != "f":
                raise CheckpointError(f"bad model config: dtype {dtype} is not floating")
        model = cls()
        for lc in config["layers"]:
            model.add(layer_from_config(lc, device=device, dtype=dtype))
        return model

    def save(self, path, extra=None):
        """Write the architecture (as data) and the weights to ``path`` through ``nnx.save``;
        ``extra`` is a dict of anything ``nnx.save`` stores (e.g. preprocessing statistics).
        Reload with ``nnx.load_model(path)``. Nothing is pickled.

        ``path`` must end in ``.npz`` or ``.nnx`` (nnx's format, an ``.npz`` archive): a
        ValueError names them for any other name (``.keras``, ``.h5``, ...), and nothing is
        written."""
        path = check_save_path(path, "save")
        serialization.save({"format": FORMAT, "config": self.get_config(),
                            "state_dict": self.state_dict(), "extra": dict(extra or {})}, path)

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn=None):
        """Print a table of the layers, their output shapes and parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        shape = None
        total = trainable = 0
        for name, m in self.named_children():
            n = sum(p.size for p in m.parameters())
            total += n
            trainable += sum(p.size for p in m.parameters() if p.requires_grad)
            shape = m.output_shape(shape)
            label = type(m).__name__
            if getattr(m, "activation", None) not in (None, "linear") and (
                    hasattr(m, "units") or hasattr(m, "filters")):
                label += f" ({m.activation})"
            dims = "?" if not shape else ", ".join(str(d) for d in (None,) + tuple(shape))
            rows.append((f"{name} {label}", dims if dims == "?" else f"({dims})", f"{n:,}"))
        w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "=" * sum(w)
        out = [line]
        for i, r in enumerate(rows):
            out.append("".join(c.ljust(w[j]) for j, c in enumerate(r)))
            if i == 0:
                out.append(line)
        out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(out)
        (print_fn or print)(text)
        return None
