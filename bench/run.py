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
runners reverses every other round. Each median ratio comes with its 95% confidence interval and
kcompile's verdict: faster, tied or slower, as the interval lies above, around or below 1
(`stats.py`). Also printed: ONNX node counts before and after onnxruntime's optimizer, which
peers run the same onnxruntime kernels as kcompile -O2, kcompile's compile time, and achieved
GFLOP/s as a fraction of this machine's float32 GEMM rate, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import collections
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
from stats import SETTLE, median_ci, paired_ratios

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


def optimized(model: onnx.ModelProto | str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The model, and the model onnxruntime runs after its own optimizer."""
    proto = onnx.load(model) if isinstance(model, str) else model
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        session(proto, path)
        return proto, onnx.load(path)


# onnxruntime's CPU kernels for these hand their input's buffer on without copying.
IN_PLACE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def kernel_types(model: onnx.ModelProto) -> collections.Counter[str]:
    """How many nodes of each op type onnxruntime runs, less those that only relabel a buffer."""
    return collections.Counter(
        f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node if n.op_type not in IN_PLACE
    )


def compare_kernels(ours: collections.Counter[str], theirs: collections.Counter[str]) -> str:
    def listed(c: collections.Counter[str]) -> str:
        return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(c.items()))

    extra, missing = ours - theirs, theirs - ours
    if not extra and not missing:
        return "the same kernel types as kcompile -O2"
    if not extra:
        return f"kcompile -O2's kernel types and more: {listed(missing)}"
    return f"other kernel types than kcompile -O2: kcompile has {listed(extra) or '-'}, it has {listed(missing) or '-'}"


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


GEMM_N = 1024


def gemm_runner() -> Runner:
    """A float32 GEMM of GEMM_N^3 in onnxruntime: the reference rate of the "of GEMM" column, timed
    in the same rounds as the workloads (its speed drifts with the machine's load, as theirs does)."""
    from kcompile.runtime import lower_to_onnx

    from kcompile.ir import Builder, TensorType

    b = Builder()
    a = b.input("a", TensorType("float32", (GEMM_N, GEMM_N)))
    w = b.input("w", TensorType("float32", (GEMM_N, GEMM_N)))
    b.graph.outputs = [b.op("matmul", [a, w])]
    sess = session(lower_to_onnx(b.graph))
    rng = np.random.default_rng(0)
    feeds = {k: rng.random((GEMM_N, GEMM_N), dtype=np.float32) for k in ("a", "w")}
    return lambda: sess.run(None, feeds)


def measure(runners: dict[str, Runner], rounds: int, min_time: float) -> dict[str, list[float]]:
    """Seconds per call of each runner in every round (each repeats for about `min_time`); the
    runners take turns, in reverse order every other round, each after a pause of SETTLE."""
    reps = {}
    for name, run in runners.items():
        run()
        t0 = time.perf_counter()
        run()
        reps[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in list(runners)[:: -1 if r % 2 else 1]:
            time.sleep(SETTLE)
            run = runners[name]
            start = time.perf_counter()
            for _ in range(reps[name]):
                run()
            times[name].append((time.perf_counter() - start) / reps[name])
    return times


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
    gemm = gemm_runner()
    print(f"{os.cpu_count()} cores; 'of GEMM': of the float32 GEMM rate (MatMul {GEMM_N}^3) in the same rounds")
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
            graphs = {k: optimized(c.onnx_model) for k, c in compiled.items()}
            graphs.update({k: optimized(p) for k, p in files.items()})
            ours = kernel_types(graphs["kcompile -O2"][1])
            for k, (raw, opt) in graphs.items():
                same = "" if k == "kcompile -O2" else f"; {compare_kernels(ours, kernel_types(opt))}"
                n_raw, n_opt = len(raw.graph.node), len(opt.graph.node)
                print(f"  {k:<22} ONNX nodes {n_raw:>5}, after onnxruntime's optimizer {n_opt:>5}{same}")
            print(
                f"  {'batch':>5}  {'runner':<22} {'median ms':>10} {'vs -O2 [95% CI]':>22} {'kcompile':>8}"
                f" {'GFLOP/s':>8} {'of GEMM':>8}"
            )
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
                times = measure(runners | {"gemm": gemm}, args.rounds, args.min_time)
                gemm_rate = 2 * GEMM_N**3 / statistics.median(times.pop("gemm")) / 1e9
                work = flops(compiled["kcompile -O0"].graph, batch)
                for k, t in times.items():
                    m = statistics.median(t)
                    gf = work / m / 1e9
                    ci = median_ci(paired_ratios(t, times["kcompile -O2"]))
                    verdict = "" if k == "kcompile -O2" else ci.verdict()
                    row = f"{m * 1e3:>10.3f} {ci!s:>22} {verdict:>8} {gf:>8.2f} {gf / gemm_rate:>8.1%}"
                    print(f"  {batch:>5}  {k:<22} {row}")
                print(f"  {batch:>5}  (float32 GEMM rate in these rounds: {gemm_rate:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
