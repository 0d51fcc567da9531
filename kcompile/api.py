"""`kc.compile(model)`: model -> IR -> passes -> ONNX -> a runnable CompiledModel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .errors import KCompileError, ModelError

if TYPE_CHECKING:
    from kcompile.passes import PassManager
    from kcompile.runtime.executor import CompiledModel

    from .ir.graph import Graph

LEARNING_PHASES = ("0", "1", "dynamic")


def _phase(value: Any) -> str:
    text = str(value).lower() if not isinstance(value, bool) else str(int(value))
    if text not in LEARNING_PHASES:
        raise KCompileError(f"learning_phase must be 0, 1 or 'dynamic', got {value!r}")
    return text


def optimize(
    graph: Graph,
    learning_phase: Any = 0,
    level: int = 2,
    passes: list[str] | None = None,
    manager: PassManager | None = None,
    input_layout: str = "NHWC",
) -> Graph:
    """Run the inference pipeline of `level` (or exactly `passes`) on `graph`.

    `manager`, when given, is a PassManager whose options (print_after, ...) are used and whose
    records and explanations the caller reads afterwards.
    """
    from kcompile.passes import PassManager, pipeline

    pm = manager if manager is not None else PassManager([])
    pm.passes = pipeline(level, _phase(learning_phase), passes, input_layout)
    return pm.run(graph)


def compile(
    model: Any,
    learning_phase: Any = 0,
    opset: int | None = None,
    threads: int = 0,
    level: int = 2,
    passes: list[str] | None = None,
    manager: PassManager | None = None,
    input_layout: str = "NHWC",
) -> CompiledModel:
    """Compile a model for inference to ONNX run by onnxruntime.

    `learning_phase`: 0 (inference, the default: Dropout is the identity, BatchNormalization uses
    its moving statistics), 1 (training behaviour), or "dynamic" (a bool `learning_phase` input).
    `level`: the optimisation level 0..3 (default 2); `passes`: an explicit pass list instead.
    `input_layout="NCHW"`: image inputs are fed channels-first (no transpose at the input).
    """
    from kcompile.runtime import DEFAULT_OPSET, CompiledModel, lower_to_onnx

    from .model import Model

    if not isinstance(model, Model):
        raise ModelError(f"kc.compile takes a kc.Model or kc.Sequential, got {type(model).__name__}")
    start = time.perf_counter()
    graph = optimize(model.to_graph(), learning_phase, level, passes, manager, input_layout)
    compiled = CompiledModel(graph, lower_to_onnx(graph, opset or DEFAULT_OPSET), threads, model.count_params())
    compiled.compile_seconds = time.perf_counter() - start
    return compiled
