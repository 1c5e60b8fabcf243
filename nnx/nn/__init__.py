"""``nnx.nn``: modules, layers and losses with PyTorch's names.

``nnx.nn.Sequential`` and ``nnx.nn.Dense`` name the Keras model and layer of ``nnx.keras``
(bound by ``nnx/__init__.py``, which sits above both packages: nothing in ``nnx.nn`` imports
``nnx.keras``); the plain PyTorch container is ``nnx.nn.container.Sequential``.
"""
from . import activation, config, init, utils
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .container import ModuleDict, ModuleList, ParameterList, Sequential
from .inputs import Input
from .layers import Dropout, Flatten, Identity, Linear, LogSoftmax, Softmax
from .loss import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, L1Loss, MSELoss, NLLLoss,
                   SmoothL1Loss)
from .module import Module, Parameter

__all__ = ["init", "utils", "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict",
           "ParameterList", "Linear", "Dense", "Sigmoid", "Tanh",
           "ReLU", "LeakyReLU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Identity", "Input",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss", "L1Loss", "HuberLoss", "SmoothL1Loss"]
