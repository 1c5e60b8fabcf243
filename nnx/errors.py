"""nnx's own exception types.

Each subclasses the built-in exception a Python user would catch (ValueError, TypeError,
RuntimeError), so ``except ValueError`` keeps working, and ``except nnx.NNXError`` catches all.
Messages name the op or layer, what was expected and what was given.
"""


class NNXError(Exception):
    """Base class of every error nnx raises on purpose."""


class ShapeError(NNXError, ValueError):
    """An input's shape does not fit the op or layer."""


class DTypeError(NNXError, TypeError):
    """An input's dtype does not fit the op (or two inputs disagree)."""


class DeviceError(NNXError, RuntimeError):
    """A device is unusable, or tensors of two devices met in one op."""


class LabelError(NNXError, ValueError, IndexError):
    """Class labels out of range, or of a non-integer dtype."""


class ValueRangeError(NNXError, ValueError):
    """An input's values lie outside what the op accepts (e.g. BCE probabilities outside [0, 1])."""


class GraphError(NNXError, RuntimeError):
    """Misuse of the autograd graph (backward twice, non-scalar backward, ...)."""


class AnomalyError(NNXError, RuntimeError):
    """Anomaly mode found a NaN or inf; the message names the op and the pass."""


class CheckpointError(NNXError, ValueError):
    """A checkpoint file is missing, corrupt, unsafe, or does not match the model."""


class ExportError(NNXError, NotImplementedError):
    """A model cannot be exported (``nnx.onnx.export``): the message names the op and the module
    it ran in."""


class OutOfMemoryError(NNXError, MemoryError):
    """The device ran out of memory; the message gives the size requested and a hint.

    Attributes:
        requested_bytes: the size of the allocation that failed (None when unknown).
        device: the device string ("cuda:0", ...).
    """

    requested_bytes = None
    device = None
