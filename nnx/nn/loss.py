"""Loss modules wrapping ``nnx.functional`` (PyTorch names and arguments)."""
from __future__ import annotations

from .. import functional as F
from .module import Module


class _Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        F._check_reduction(reduction, type(self).__name__)
        self.reduction = reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


class MSELoss(_Loss):
    """Mean squared error between input and a target of the same shape."""

    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)


class BCELoss(_Loss):
    """Binary cross-entropy on probabilities (e.g. after a Sigmoid)."""

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy in one stable op, on logits."""

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.reduction)


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,) or probabilities (N, C).

    Args:
        weight: a (C,) rescaling of each class (the mean divides by the summed weights).
        ignore_index: label value whose rows are skipped (default -100, as PyTorch).
        reduction: "mean" (over non-ignored rows), "sum" or "none".
        label_smoothing: in [0, 1]; mixes the target with the uniform distribution.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        if isinstance(weight, (int, str)) and not isinstance(weight, bool):
            raise TypeError("CrossEntropyLoss: the first argument is weight (a (C,) tensor); "
                            "pass ignore_index= and reduction= by keyword")
        self.weight, self.ignore_index = weight, int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.reduction, self.ignore_index,
                               weight=self.weight, label_smoothing=self.label_smoothing)


class NLLLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        if isinstance(weight, (int, str)) and not isinstance(weight, bool):
            raise TypeError("NLLLoss: the first argument is weight (a (C,) tensor); pass "
                            "ignore_index= and reduction= by keyword")
        self.weight, self.ignore_index = weight, int(ignore_index)

    def forward(self, input, target):
        return F.nll_loss(input, target, self.reduction, self.ignore_index, self.weight)


class L1Loss(_Loss):
    """Mean absolute error between input and a target of the same shape."""

    def forward(self, input, target):
        return F.l1_loss(input, target, self.reduction)


class _ThresholdLoss(_Loss):
    """A loss of ``F.<loss_fn>(input, target, reduction, threshold)``."""

    loss_fn = None

    def __init__(self, reduction, threshold):
        super().__init__(reduction)
        self.threshold = float(threshold)

    def forward(self, input, target):
        return getattr(F, self.loss_fn)(input, target, self.reduction, self.threshold)


class HuberLoss(_ThresholdLoss):
    """Huber loss: quadratic for |input - target| < delta, linear beyond."""

    loss_fn = "huber_loss"

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction, delta)

    delta = property(lambda self: self.threshold)


class SmoothL1Loss(_ThresholdLoss):
    """Smooth L1 loss: Huber with delta = beta, divided by beta."""

    loss_fn = "smooth_l1_loss"

    def __init__(self, reduction="mean", beta=1.0):
        super().__init__(reduction, beta)

    beta = property(lambda self: self.threshold)
