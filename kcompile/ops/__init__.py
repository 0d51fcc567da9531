"""The primitive ops of kcompile, one registry entry each (see `registry`)."""

from . import elementwise, nn, structural  # noqa: F401  (importing registers the ops)
from .registry import OPS, REQUIRED, Attr, OnnxEmitter, OpDef, get_op, register

__all__ = ["OPS", "REQUIRED", "Attr", "OnnxEmitter", "OpDef", "get_op", "register"]
