"""A compiled model: the optimized IR, its ONNX lowering, and an onnxruntime session.

`compiled(x)` and `compiled.predict(x, batch_size=...)` feed NumPy arrays by input order or name;
feeds are checked against the IR input types first, so a wrong shape names the input and both
shapes instead of surfacing an engine error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from kcompile.errors import RuntimeFailure
from kcompile.fileio import write_atomic
from kcompile.ir.graph import Graph
from kcompile.ir.interpreter import check_feeds


class CompiledModel:
    def __init__(self, graph: Graph, model: onnx.ModelProto, threads: int = 0, params: int | None = None) -> None:
        self.graph = graph
        # The source model's parameter count: optimisation may fold weights away (zero biases)
        # or together, so the graph's own count can be smaller.
        self._params = params
        self.onnx_model = model
        self.threads = threads
        self._session: Any = None
        self.input_names = [i.name for i in model.graph.input]
        self.output_names = [o.name for o in model.graph.output]
        self.compile_seconds = 0.0

    # Introspection -------------------------------------------------------------------------
    @property
    def node_count(self) -> int:
        return len(self.onnx_model.graph.node)

    def count_params(self) -> int:
        """Parameters of the compiled model (as Keras counts them)."""
        return self._params if self._params is not None else self.graph.count_params()

    def stored_values(self) -> int:
        """Numbers stored in the ONNX file's weights after optimisation."""
        return self.graph.count_params()

    @property
    def initializer_count(self) -> int:
        return len(self.onnx_model.graph.initializer)

    def serialized(self) -> bytes:
        return self.onnx_model.SerializeToString()

    def save(self, path: str) -> None:
        """Write the ONNX file atomically (the old file survives an interrupted write)."""
        write_atomic(path, self.serialized())

    # Running -------------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if self.threads:
                opts.intra_op_num_threads = self.threads
            opts.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(self.serialized(), opts, providers=["CPUExecutionProvider"])
            except Exception as err:  # onnxruntime raises its own exception types
                raise RuntimeFailure(f"onnxruntime could not load the compiled model: {err}") from None
        return self._session

    def _feeds(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        graph_inputs = [v.name for v in self.graph.inputs]
        if args and len(args) == 1 and isinstance(args[0], Mapping):
            feeds = dict(args[0])
        elif args and len(args) == 1 and isinstance(args[0], list | tuple) and len(graph_inputs) > 1:
            feeds = dict(zip(graph_inputs, args[0], strict=False))
            if len(args[0]) != len(graph_inputs):
                raise RuntimeFailure(f"the model takes {len(graph_inputs)} inputs {graph_inputs}, got {len(args[0])}")
        else:
            if len(args) > len(graph_inputs):
                raise RuntimeFailure(f"the model takes {len(graph_inputs)} inputs {graph_inputs}, got {len(args)}")
            feeds = dict(zip(graph_inputs, args, strict=False))
        feeds.update(kwargs)
        checked = check_feeds(self.graph, {k: np.asarray(v) for k, v in feeds.items()})
        # IR input names map to ONNX inputs in order (the learning phase, when dynamic, comes last).
        out = {onnx_name: checked[v.name] for onnx_name, v in zip(self.input_names, self.graph.inputs, strict=False)}
        return out

    def run(self, feeds: dict[str, np.ndarray], training: bool = False) -> list[np.ndarray]:
        if "learning_phase" in self.input_names:
            feeds = {**feeds, "learning_phase": np.array(training)}
        try:
            return list(self.session.run(self.output_names, feeds))
        except RuntimeFailure:
            raise
        except Exception as err:
            raise RuntimeFailure(f"onnxruntime failed to run the model: {err}") from None

    def __call__(self, *args: Any, training: bool = False, **kwargs: Any) -> Any:
        outs = self.run(self._feeds(args, kwargs), training)
        return outs[0] if len(outs) == 1 else outs

    def predict(self, x: Any, batch_size: int = 32) -> Any:
        """Run in batches of `batch_size` along axis 0 and concatenate, as Keras' predict."""
        if batch_size <= 0:
            raise RuntimeFailure(f"batch_size must be positive, got {batch_size}")
        feeds = self._feeds((x,), {})
        n = {a.shape[0] for a in feeds.values()}
        if len(n) != 1:
            raise RuntimeFailure(f"all inputs must have the same number of samples, got {sorted(n)}")
        (total,) = n
        chunks: list[list[np.ndarray]] = []
        for start in range(0, total, batch_size):
            chunks.append(self.run({k: v[start : start + batch_size] for k, v in feeds.items()}))
        if not chunks:
            raise RuntimeFailure("predict needs at least one sample")
        outs = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
        return outs[0] if len(outs) == 1 else outs

    def latency(self, x: Any, repeat: int = 50, warmup: int = 5) -> float:
        """Median seconds per call on `x` (the session is created and warmed first)."""
        feeds = self._feeds((x,), {})
        for _ in range(warmup):
            self.run(feeds)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.run(feeds)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
