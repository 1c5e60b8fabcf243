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
from .pooling import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d,
                      MaxPool2d)
from . import parallel  # nn.parallel.DistributedDataParallel (nnx.distributed)

__all__ = ["init", "utils", "Module", "Parameter", "Sequential", "ModuleList", "ModuleDict",
           "ParameterList", "Linear", "Dense", "Sigmoid", "Tanh",
           "ReLU", "LeakyReLU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Identity", "Input",
           "MSELoss", "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss", "L1Loss", "HuberLoss", "SmoothL1Loss"]
__all__ += ["MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
            "AdaptiveAvgPool2d"]
from .conv import Conv1d, Conv2d  # noqa: E402

__all__ += ["Conv1d", "Conv2d"]
from .activation import ELU, GELU, SiLU, Softplus  # noqa: E402
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm  # noqa: E402
from .sparse import Embedding  # noqa: E402

__all__ += ["GELU", "SiLU", "ELU", "Softplus", "BatchNorm1d", "BatchNorm2d", "LayerNorm",
            "Embedding"]
