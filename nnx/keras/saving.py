"""``load_model`` / ``load_checkpoint``: models written by ``Sequential.save``.

A saved model is an ``nnx.save`` file (``.npz``, never pickled) holding ``{"format":
"nnx.sequential", "config": model.get_config(), "state_dict": ..., "extra": {...}}``. Loading
rebuilds the architecture from the config through the table of nnx's own layer classes
(``nnx.nn.config``): nothing named in the file is imported or evaluated.
"""
from __future__ import annotations

from .. import serialization
from ..errors import CheckpointError
from .model import FORMAT, Sequential

__all__ = ["load_model", "load_checkpoint"]


def load_checkpoint(path, device=None):
    """``(model, extra)`` from a file written by ``Sequential.save`` (or ``ModelCheckpoint``):
    the model rebuilt from its stored architecture with its weights, and the ``extra`` dict
    saved beside them. ``device`` defaults to the current default device."""
    ck = serialization.load(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or "config" not in ck:
        raise CheckpointError(f"{path}: not a saved nnx model (no architecture inside); a file "
                              f"with only weights loads with model.load_state_dict(nnx.load(path))")
    cfg = ck["config"]
    dtype = cfg.get("dtype") if isinstance(cfg, dict) else None
    model = Sequential.from_config(cfg, device=device, dtype=dtype)
    model.load_state_dict(ck.get("state_dict") or {})
    return model, ck.get("extra") or {}


def load_model(path, device=None):
    """The model saved by ``Sequential.save`` at ``path`` (architecture and weights; not
    compiled)."""
    return load_checkpoint(path, device)[0]
