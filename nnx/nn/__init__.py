"""``nnx.nn``: modules, layers and losses with PyTorch's names.

``nnx.nn.Sequential`` and ``nnx.nn.Dense`` name the Keras model and layer of ``nnx.keras``
(bound by ``nnx/__init__.py``, which sits above both packages: nothing in ``nnx.nn`` imports
``nnx.keras``); the plain PyTorch container is ``nnx.nn.container.Sequential``.
"""
from . import activation, config, init
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .container import Sequential
from .layers import Dropout, Flatten, Identity, Linear, LogSoftmax, Softmax
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module, Parameter

__all__ = ["init", "Module", "Parameter", "Sequential", "Linear", "Dense", "Sigmoid", "Tanh",
           "ReLU", "LeakyReLU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Identity", "MSELoss",
           "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss"]
