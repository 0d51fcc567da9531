"""Side-by-side inference benchmarks (`make bench`; never part of `make test`).

Each workload is built once with one set of weights; every runner is timed on the same input,
interleaved round by round so that machine noise hits all of them alike. Reported: the median
latency per runner and its ratio to kcompile's onnxruntime run (ratio > 1: slower than kcompile).

Runners present now: kcompile's ONNX in onnxruntime, and kcompile's NumPy reference interpreter
(the semantic oracle, a floor for comparison). PyTorch eager joins when torch is installed
(`pip install torch`); the Keras and torch.onnx exporters arrive with the optimization work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import kcompile as kc
from kcompile import layers
from kcompile.ir import run_graph

Runner = Callable[[], object]


def mnist_mlp() -> kc.Model:
    x = kc.Input(shape=(784,), name="x")
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(x))
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(h))
    return kc.Model(x, layers.Dense(10, activation="softmax")(h), name="mnist_mlp")


def small_cnn() -> kc.Model:
    x = kc.Input(shape=(28, 28, 1), name="x")
    h = layers.MaxPooling2D()(layers.Conv2D(32, 3, activation="relu")(x))
    h = layers.MaxPooling2D()(layers.Conv2D(64, 3, activation="relu")(h))
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(layers.Flatten()(h)))
    return kc.Model(x, layers.Dense(10, activation="softmax")(h), name="small_cnn")


WORKLOADS: dict[str, tuple[Callable[[], kc.Model], tuple[int, ...]]] = {
    "mnist_mlp": (mnist_mlp, (1, 256)),
    "small_cnn": (small_cnn, (1, 64)),
}


def torch_runner(model: kc.Model, x: np.ndarray) -> Runner | None:
    """The same network as a torch module with the same weights, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    mods: list[torch.nn.Module] = []
    nchw = False
    for layer in model.layers[1:]:
        w = layer.get_weights()
        if isinstance(layer, layers.Conv2D):
            conv = torch.nn.Conv2d(w[0].shape[2], w[0].shape[3], w[0].shape[:2])
            conv.weight.data = torch.from_numpy(w[0].transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.from_numpy(w[1])
            mods += [conv, torch.nn.ReLU()]
            nchw = True
        elif isinstance(layer, layers.MaxPooling2D):
            mods.append(torch.nn.MaxPool2d(2))
        elif isinstance(layer, layers.Flatten):
            mods += [_NhwcFlatten()]
        elif isinstance(layer, layers.Dense):
            lin = torch.nn.Linear(*w[0].shape)
            lin.weight.data = torch.from_numpy(w[0].T.copy())
            lin.bias.data = torch.from_numpy(w[1])
            mods += [lin, torch.nn.Softmax(-1) if layer.activation == "softmax" else torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods).eval()
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if nchw else x)

    def run() -> object:
        with torch.inference_mode():
            return net(t)

    return run


class _NhwcFlatten:  # a torch module built lazily so that torch stays optional
    def __new__(cls):  # type: ignore[no-untyped-def]
        import torch

        class Flatten(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens channels-last

        return Flatten()


def measure(runners: dict[str, Runner], rounds: int, per_round: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm up (session creation, allocation)
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(per_round):
                run()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=10)
    args = parser.parse_args()
    kc.set_random_seed(0)
    print(f"{'workload':<12} {'batch':>5}  {'runner':<22} {'median ms':>10} {'vs kcompile':>12}")
    for name, (build, batches) in WORKLOADS.items():
        model = build()
        t0 = time.perf_counter()
        compiled = kc.compile(model)
        compile_s = time.perf_counter() - t0
        graph = compiled.graph
        for batch in batches:
            shape = (batch, *model.inputs[0].shape[1:])
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            runners: dict[str, Runner] = {
                "kcompile onnxruntime": lambda x=x, c=compiled: c(x),
                "kcompile reference": lambda x=x, g=graph: run_graph(g, {"x": x}),
            }
            torch_run = torch_runner(model, x)
            if torch_run is not None:
                runners["pytorch eager"] = torch_run
            medians = measure(runners, args.rounds, args.per_round)
            base = medians["kcompile onnxruntime"]
            for runner, m in medians.items():
                print(f"{name:<12} {batch:>5}  {runner:<22} {m * 1e3:>10.3f} {m / base:>11.2f}x")
        print(f"{name:<12} compile {compile_s * 1e3:.1f} ms, {compiled.node_count} ONNX nodes")


if __name__ == "__main__":
    main()
