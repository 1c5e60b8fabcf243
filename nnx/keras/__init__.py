"""``nnx.keras``: Keras's model API above ``nnx.nn`` (nothing in ``nnx.nn`` imports it).

* :class:`Sequential` (``model.py``): ``nnx.nn.container.Sequential`` plus ``add``, ``compile``,
  ``fit``, ``evaluate``, ``predict``, ``summary``, ``save``, ``get_weights`` / ``set_weights``,
  ``get_config`` / ``from_config``;
* :class:`Dense` (``layers.py``): a ``Linear`` with its activation and Keras's initialization;
  :class:`Conv2D`, :class:`MaxPooling2D`, :class:`BatchNormalization` (channels-last images,
  converted to nnx's NCHW at each layer), and ``nnx.nn``'s ``Flatten`` and ``Dropout``;
* :class:`Input` (``nnx.nn.inputs``): Keras's ``Input(shape)``, the per-sample input shape;
* ``callbacks`` (``EarlyStopping``, ``ModelCheckpoint``, ``TerminateOnNaN``), :class:`History`;
* :func:`load_model` / :func:`load_checkpoint` (``saving.py``);
* the parts of training: ``compiling``, ``losses``, ``metrics``, ``heads`` (the fused logits
  head), ``data`` (batch sources), ``fitting`` (the epoch loop).

``nnx`` binds ``nnx.nn.Sequential``, ``nnx.nn.Dense``, ``nnx.load_model``, ``nnx.History`` and
``nnx.callbacks`` to these, so ``from nnx.nn import Sequential, Dense`` gives the Keras ones.
"""
from . import callbacks
from .history import History
from ..nn.inputs import Input
from .layers import ACTIVATIONS, BatchNormalization, Conv2D, Dense, MaxPooling2D
from ..nn.layers import Dropout, Flatten
from .model import Sequential
from .saving import load_checkpoint, load_model

__all__ = ["Sequential", "Dense", "Input", "ACTIVATIONS", "History", "callbacks", "load_model",
           "load_checkpoint", "Conv2D", "MaxPooling2D", "BatchNormalization", "Flatten",
           "Dropout"]
