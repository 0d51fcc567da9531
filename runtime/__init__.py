"""Lowering to back ends and the executors that run the result (installed as `kcompile.runtime`)."""

from .executor import CompiledModel
from .onnx_lowering import DEFAULT_OPSET, IR_VERSION, MAX_OPSET, lower_to_onnx

__all__ = ["DEFAULT_OPSET", "IR_VERSION", "MAX_OPSET", "CompiledModel", "lower_to_onnx"]
