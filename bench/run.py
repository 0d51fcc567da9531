"""Side-by-side inference benchmarks (`make bench`; never part of `make test`).

Each workload is built once with one set of weights. Runners, all on the same input and timed
interleaved round by round (so machine noise hits all of them alike), median per runner:
- kcompile -O0 and -O2 ONNX in onnxruntime;
- Keras 3's own ONNX export (`model.export(format="onnx")`, torch backend) in onnxruntime;
- `torch.onnx.export` of the equivalent native torch module in onnxruntime;
- PyTorch eager (inference mode).
Peers need the `bench` extra (`pip install .[bench]`); a missing peer is reported and skipped.
Every peer's output is checked against kcompile -O0 before timing. Ratios are peer / kcompile
-O2 time within each round, the median over rounds (> 1: the peer is slower); the order of the
runners reverses every other round. Also printed: ONNX node counts before and after onnxruntime's
optimizer, kcompile's compile time, and achieved GFLOP/s as a fraction of this machine's
measured float32 GEMM peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("KERAS_BACKEND", "torch")

import workloads

import kcompile as kc
from kcompile.ir import Graph

Runner = Callable[[], Any]


def session(model: onnx.ModelProto | str, optimized_path: str | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Interleaved runners share the cores: a session's threads must not keep spinning after its
    # run and steal them from the next runner.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def node_counts(model: onnx.ModelProto | str) -> tuple[int, int]:
    proto = onnx.load(model) if isinstance(model, str) else model
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        session(proto, path)
        return len(proto.graph.node), len(onnx.load(path).graph.node)


def ort_runner(model: onnx.ModelProto | str, x: np.ndarray) -> Runner:
    sess = session(model)
    feeds = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feeds)[0]


def flops(graph: Graph, batch: int) -> float:
    """Multiply-adds x 2 of matmul, gemm and conv nodes at this batch size."""
    total = 0.0
    for n in graph.nodes:
        out = [batch if isinstance(d, str) else d for d in n.outputs[0].type.shape]
        if n.op in ("matmul", "gemm"):
            k = n.inputs[0].type.shape[-1]
            total += 2.0 * np.prod(out) * int(k)  # type: ignore[arg-type]
        elif n.op == "conv":
            w = n.inputs[1].type.shape
            total += 2.0 * np.prod(out) * int(np.prod(w[1:]))  # type: ignore[arg-type]
        elif n.op in ("lstm", "gru", "simple_rnn"):
            # Per step and sample: the input and recurrent matmuls of every gate.
            steps = n.inputs[0].type.shape[1]
            w, r = n.inputs[1].type.shape, n.inputs[2].type.shape
            if isinstance(steps, int):
                total += 2.0 * batch * steps * (int(np.prod(w)) + int(np.prod(r)))  # type: ignore[arg-type]
    return total


def gemm_peak() -> float:
    """Measured float32 GEMM GFLOP/s of this machine (onnxruntime MatMul, 1024^3)."""
    from kcompile.runtime import lower_to_onnx

    from kcompile.ir import Builder, TensorType

    b = Builder()
    a = b.input("a", TensorType("float32", (1024, 1024)))
    w = b.input("w", TensorType("float32", (1024, 1024)))
    b.graph.outputs = [b.op("matmul", [a, w])]
    sess = session(lower_to_onnx(b.graph))
    rng = np.random.default_rng(0)
    feeds = {"a": rng.random((1024, 1024), dtype=np.float32), "w": rng.random((1024, 1024), dtype=np.float32)}
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return 2 * 1024**3 / min(times) / 1e9


def measure(runners: dict[str, Runner], rounds: int, min_time: float) -> dict[str, list[float]]:
    """Seconds per call of each runner in every round (each repeats for about `min_time`); the
    runners take turns, in reverse order every other round."""
    reps = {}
    for name, run in runners.items():
        run()
        t0 = time.perf_counter()
        run()
        reps[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in list(runners)[:: -1 if r % 2 else 1]:
            run = runners[name]
            start = time.perf_counter()
            for _ in range(reps[name]):
                run()
            times[name].append((time.perf_counter() - start) / reps[name])
    return times


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of the time ratio within each round (robust to the machine's speed
    changing between rounds, which a ratio of medians is not)."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def peers(name: str, model: kc.Model, x: np.ndarray, tmp: str) -> tuple[dict[str, Runner], dict[str, Any]]:
    """Peer runners that could be built, and the ONNX files of the exporters (for node counts)."""
    runners: dict[str, Runner] = {}
    files: dict[str, Any] = {}
    try:
        import torch

        module = workloads.torch_module(model)
        xt = torch.from_numpy(workloads.to_nchw(x))

        def eager() -> Any:
            with torch.inference_mode():
                return module(xt)

        runners["pytorch eager"] = eager
        path = os.path.join(tmp, f"{name}_torch.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (xt,), path, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                dynamo=False, opset_version=17,
            )  # fmt: skip
        files["torch.onnx"] = path
        runners["torch.onnx + ort"] = ort_runner(path, workloads.to_nchw(x))
    except ImportError as err:
        print(f"  (pytorch peers skipped: {err})")
    try:
        import keras

        km = workloads.keras_model(name, model)
        km.predict(x, verbose=0)  # Keras exports only a model that has been called
        path = os.path.join(tmp, f"{name}_keras.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            km.export(path, format="onnx", verbose=False)
        files["keras export"] = path
        runners["keras export + ort"] = ort_runner(path, x)
        del keras
    except ImportError as err:
        print(f"  (keras peer skipped: {err})")
    return runners, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds per runner per round")
    parser.add_argument("--only", nargs="*", help="workload names to run")
    args = parser.parse_args()
    peak = gemm_peak()
    print(f"machine float32 GEMM peak (onnxruntime MatMul 1024^3): {peak:.1f} GFLOP/s, {os.cpu_count()} cores")
    for name, (build, batches) in workloads.WORKLOADS.items():
        if args.only and name not in args.only:
            continue
        print(f"\n== {name}")
        kc.set_random_seed(0)
        model = build()
        workloads.randomize(model)
        compiled: dict[str, Any] = {}
        for level in (0, 2):
            t0 = time.perf_counter()
            compiled[f"kcompile -O{level}"] = kc.compile(model, level=level)
            print(f"  compile -O{level}: {(time.perf_counter() - t0) * 1e3:.0f} ms")
        with tempfile.TemporaryDirectory() as tmp:
            x0 = workloads.sample_input(model, 2, seed=1)
            _, files = peers(name, model, x0, tmp)
            counts = {k: node_counts(c.onnx_model) for k, c in compiled.items()}
            counts.update({k: node_counts(p) for k, p in files.items()})
            for k, (raw, opt) in counts.items():
                print(f"  {k:<22} ONNX nodes {raw:>5}, after onnxruntime's optimizer {opt:>5}")
            print(f"  {'batch':>5}  {'runner':<22} {'median ms':>10} {'vs -O2':>8} {'GFLOP/s':>8} {'of peak':>8}")
            for batch in batches:
                x = workloads.sample_input(model, batch, seed=batch)
                runners: dict[str, Runner] = {k: ort_runner(c.onnx_model, x) for k, c in compiled.items()}
                peer_runners, _ = peers(name, model, x, tmp)
                runners.update(peer_runners)
                want = runners["kcompile -O0"]()
                for k, run in runners.items():
                    got = np.asarray(run())
                    if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                        print(f"  !! {k} disagrees with kcompile -O0 (max diff {np.abs(got - want).max():.2e})")
                times = measure(runners, args.rounds, args.min_time)
                work = flops(compiled["kcompile -O0"].graph, batch)
                for k, t in times.items():
                    m = statistics.median(t)
                    gf = work / m / 1e9
                    ratio = paired_ratio(t, times["kcompile -O2"])
                    print(f"  {batch:>5}  {k:<22} {m * 1e3:>10.3f} {ratio:>7.2f}x {gf:>8.2f} {gf / peak:>7.1%}")


if __name__ == "__main__":
    main()
