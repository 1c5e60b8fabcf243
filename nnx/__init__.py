"""nnx: a small neural-network framework with one code base for NumPy (CPU) and CuPy (CUDA).

Quick tour::

    import nnx
    from nnx import nn, optim
    import nnx.functional as F

    nnx.set_device("auto")            # "cpu", "cuda", "cuda:N" or "auto"
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Linear(2, 1), nn.Sigmoid())
    opt = optim.Adam(model.parameters(), lr=0.01)
"""
import os as _os

# NOTE: installed (pip install), the array backends and the benchmark suite are the subpackages
# nnx.backends and nnx.benchmarks. In a source checkout they are the folders backends/ and
# benchmarks/ beside nnx/ (the layout shows the architecture): there the checkout's root is
# searched for nnx's subpackages too, so the same names resolve. Nothing installs a top-level
# "backends" or "benchmarks" package.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "backends")) \
        and _os.path.isfile(_os.path.join(_root, "backends", "base.py")):
    __path__.append(_root)
del _here, _root

from . import _config
from ._config import (cuda_available, detect_anomaly, device, enable_grad, get_default_dtype,
                      get_device, get_rng_state, inference_mode, is_anomaly_enabled, is_grad_enabled,
                      manual_seed, no_grad, set_default_dtype, set_detect_anomaly, set_device,
                      set_rng_state)
from .errors import (AnomalyError, CheckpointError, DeviceError, DTypeError, GraphError, LabelError,
                     NNXError, OutOfMemoryError, ShapeError, ValueRangeError)
from .tensor import Tensor, as_tensor, from_dlpack, from_numpy, is_tensor, tensor
from .ops import (abs, add, amax, amin, arange, argmax, argmin, clamp, clip, clone, div, empty_like, exp,
                  eye, flatten, full, full_like, linspace, log, matmul, max, maximum, mean, min,
                  minimum, mul, neg, norm, ones, ones_like, permute, pow, rand, rand_like, randn,
                  randn_like, reshape, sqrt, squeeze, std, sub, sum, tanh, topk, transpose, unsqueeze,
                  var, zeros, zeros_like)
from . import functional
from .functional import relu, sigmoid, softmax, log_softmax, leaky_relu
from .shape_ops import cat, chunk, concat, concatenate, split, stack, where

from . import tensor_methods  # noqa: F401  (binds the ops as Tensor methods, in one place)
from . import nn, optim
from .serialization import load, save
from .safetensors_io import load_safetensors, save_safetensors
from .torch_io import load_torch
from . import onnx  # nnx.onnx.export; the onnx package itself is imported only when exporting
from .errors import ExportError
from . import data, datasets
from . import distributed
from . import keras
from . import callbacks
from .keras import History, load_model

# The Keras model and layer under nn's names (``from nnx.nn import Sequential, Dense``), bound
# here, above both packages, since nothing in nnx.nn imports nnx.keras. The plain PyTorch
# container stays at nnx.nn.container.Sequential.
nn.Sequential, nn.Dense = keras.Sequential, keras.Dense
# nnx.distributed.DDP: the wrapper lives in nn.parallel, which imports nnx.distributed.
distributed.DDP = distributed.DistributedDataParallel = nn.parallel.DistributedDataParallel

float16, float32, float64 = "float16", "float32", "float64"


def FloatTensor(values):
    """``torch.FloatTensor(values)``: a float32 tensor (for ports of PyTorch code)."""
    return tensor(values, dtype="float32")


def LongTensor(values):
    """``torch.LongTensor(values)``: an int64 tensor."""
    return tensor(values, dtype="int64")


int32, int64, bool_ = "int32", "int64", "bool"

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "as_tensor", "FloatTensor", "LongTensor", "is_tensor", "set_device", "get_device", "device",
    "cuda_available", "set_default_dtype", "get_default_dtype", "no_grad", "enable_grad",
    "is_grad_enabled", "manual_seed", "detect_anomaly", "set_detect_anomaly", "is_anomaly_enabled",
    "save", "load", "nn", "optim", "functional", "NNXError", "ShapeError", "DTypeError",
    "DeviceError", "LabelError", "GraphError", "AnomalyError", "CheckpointError", "ValueRangeError",
    "OutOfMemoryError", "abs", "add", "amax", "arange", "argmax", "argmin", "clamp", "clip",
    "clone", "div", "exp", "flatten", "full", "log", "matmul", "max", "mean", "min", "mul", "neg",
    "ones", "ones_like", "permute", "pow", "rand", "randn", "reshape", "sqrt", "squeeze", "sub",
    "sum", "tanh", "transpose", "unsqueeze", "zeros", "zeros_like", "relu", "sigmoid", "softmax",
    "log_softmax", "leaky_relu",
]

__all__ += ["callbacks", "keras", "History", "load_model", "inference_mode", "from_dlpack",
            "from_numpy", "amin", "empty_like", "eye", "full_like", "linspace", "maximum", "minimum",
            "norm", "rand_like", "randn_like", "std", "topk", "var", "get_rng_state", "set_rng_state"]
__all__ += ["onnx", "ExportError"]
__all__ += ["cat", "concat", "concatenate", "stack", "split", "chunk", "where"]
__all__ += ["save_safetensors", "load_safetensors", "load_torch"]
