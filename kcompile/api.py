"""`kc.compile(model)`: model -> IR -> passes -> ONNX -> a runnable CompiledModel."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .errors import KCompileError, ModelError

if TYPE_CHECKING:
    from kcompile.runtime.executor import CompiledModel

    from .ir.graph import Graph

LEARNING_PHASES = ("0", "1", "dynamic")


def _phase(value: Any) -> str:
    text = str(value).lower() if not isinstance(value, bool) else str(int(value))
    if text not in LEARNING_PHASES:
        raise KCompileError(f"learning_phase must be 0, 1 or 'dynamic', got {value!r}")
    return text


def optimize(graph: Graph, learning_phase: Any = 0) -> Graph:
    """Run the inference pipeline: fold the learning phase (unless dynamic), drop dead code."""
    from kcompile.passes import DeadCodeEliminationPass, FoldLearningPhasePass, PassManager

    phase = _phase(learning_phase)
    passes = [] if phase == "dynamic" else [FoldLearningPhasePass(training=phase == "1")]
    return PassManager([*passes, DeadCodeEliminationPass()]).run(graph)


def compile(model: Any, learning_phase: Any = 0, opset: int | None = None, threads: int = 0) -> CompiledModel:
    """Compile a model for inference to ONNX run by onnxruntime.

    `learning_phase`: 0 (inference, the default: Dropout is the identity, BatchNormalization uses
    its moving statistics), 1 (training behaviour), or "dynamic" (a bool `learning_phase` input).
    """
    from kcompile.runtime import DEFAULT_OPSET, CompiledModel, lower_to_onnx

    from .model import Model

    if not isinstance(model, Model):
        raise ModelError(f"kc.compile takes a kc.Model or kc.Sequential, got {type(model).__name__}")
    start = time.perf_counter()
    graph = optimize(model.to_graph(), learning_phase)
    compiled = CompiledModel(graph, lower_to_onnx(graph, opset or DEFAULT_OPSET), threads)
    compiled.compile_seconds = time.perf_counter() - start
    return compiled
