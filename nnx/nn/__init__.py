"""``nnx.nn``: modules, layers and losses with PyTorch's names."""
from . import init
from .layers import (Dropout, Flatten, Identity, LeakyReLU, Linear, LogSoftmax, ReLU, Sequential,
                     Sigmoid, Softmax, Tanh)
from .dense import Dense
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module, Parameter

__all__ = ["init", "Module", "Parameter", "Sequential", "Linear", "Dense", "Sigmoid", "Tanh",
           "ReLU", "LeakyReLU", "Softmax", "LogSoftmax", "Dropout", "Flatten", "Identity", "MSELoss",
           "BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "NLLLoss"]
