"""The primitive ops of kcompile, one registry entry each (see `registry`)."""

from . import (  # noqa: F401  (importing registers the ops)
    elementwise,
    nn,
    noise,
    normalization,
    recurrent,
    structural,
)
from .registry import OPS, REQUIRED, Attr, OnnxEmitter, OpDef, get_op, register

__all__ = ["OPS", "REQUIRED", "Attr", "OnnxEmitter", "OpDef", "get_op", "register"]
