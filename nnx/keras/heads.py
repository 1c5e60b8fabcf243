"""The fused logits head: which tensor of the forward the compiled loss takes.

When the model ends in a sigmoid (softmax) and the loss is the binary (categorical or sparse)
cross-entropy, training and ``evaluate`` stop the forward before that activation and compute
the loss from the logits (``binary_cross_entropy_with_logits`` / ``cross_entropy``): the same
value, stable and without clipping. ``predict`` still runs the whole model.
"""
from __future__ import annotations

from ..nn import loss as L
from ..nn.activation import Sigmoid
from ..nn.fusion import fused_args
from ..nn.layers import Softmax
from .layers import Dense

__all__ = ["logits_head"]

# the activation whose logits each named loss can take instead of its probabilities
_LOGITS_OF = {"binary_crossentropy": "sigmoid", "categorical_crossentropy": "softmax",
              "sparse_categorical_crossentropy": "softmax"}


def _fused_step(m, act):
    name, slope = fused_args(act)

    def step(x):
        return m.forward(x, name, slope)
    return step


def _linear_step(m):
    def step(x):
        return m.forward(x, "linear")
    return step


def logits_head(plan, setup):
    """``(steps, head)`` for a model whose fusion plan is ``plan`` (``[(module, activation
    module or None)]``, see ``nnx.nn.container.Sequential._plan``) and the loss ``setup``
    describes: the forward as a list of callables (Tensor -> Tensor) ending in the tensor the
    loss takes, and what that tensor is: "sigmoid"/"softmax" (logits of that activation, fused
    loss), "logits" (a logits loss module), or None (the model's output)."""
    steps = [m if act is None else _fused_step(m, act) for m, act in plan]
    head = None
    want = _LOGITS_OF.get(setup.loss_name)
    if want is not None and plan:
        m, act = plan[-1]
        if act is not None:
            if act.fused_activation == want == "sigmoid":
                steps[-1] = _linear_step(m)
                head = want
        elif isinstance(m, Dense) and m._act_name == want \
                and "activation_module" not in m._modules:
            steps[-1] = m.logits
            head = want
        elif (type(m) is Sigmoid and want == "sigmoid") or \
                (type(m) is Softmax and want == "softmax" and m.axis in (-1, 1)):
            steps.pop()
            head = want
    elif isinstance(setup.loss, (L.BCEWithLogitsLoss, L.CrossEntropyLoss)):
        head = "logits"
    return steps, head
