"""Side-by-side training benchmarks (`make bench`; never part of `make test`).

Training throughput at batch 64 of two networks, each with SGD(0.01) and Adam(0.001), softmax +
sparse categorical cross-entropy, random data:
- mnist_mlp: Dense 128 ReLU, Dropout 0.5, Dense 128 ReLU, Dropout 0.5, Dense 10;
- small_cnn: Conv 32 3x3 ReLU, MaxPool, Conv 64 3x3 ReLU, MaxPool, Flatten, Dropout 0.5, Dense 10.
Runners, all starting from the same weights and timed interleaved round by round (each trains one
epoch of `--steps` batches per round, so machine noise hits all of them alike), median per runner:
- kcompile `fit` (forward, loss, backward and update as one onnxruntime graph per step);
- PyTorch eager, written as a torch user writes it (NCHW, logits + CrossEntropyLoss, the
  zero_grad / forward / backward / step loop, reading the loss every step as a progress bar does);
- Keras 3 `fit` (torch backend).
Peers need the `bench` extra (`pip install .[bench]`); a missing peer is reported and skipped.
Before timing, every peer's loss on the first batch (inference mode, same weights) is checked
against kcompile's. Ratios are peer time / kcompile time within each round, the median over
rounds (> 1: the peer is slower), with its 95% confidence interval and kcompile's verdict
(faster / tied / slower; `stats.py`); the order of the runners reverses every other round.

    KERAS_BACKEND=torch .venv/bin/python bench/train.py [--only small_cnn] [--rounds 9]
    .venv/bin/python bench/train.py --profile small_cnn     # onnxruntime's per-op times of one step
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stats import SETTLE, median_ci, paired_ratios

import kcompile as kc
from kcompile import layers
from kcompile.training import optimizers

BATCH = 64
Runner = Callable[[], Any]


def mnist_mlp() -> kc.Model:
    return kc.Sequential(
        [kc.Input(shape=(784,)), layers.Dense(128, activation="relu"), layers.Dropout(0.5),
         layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10, activation="softmax")],
        name="mnist_mlp",
    )  # fmt: skip


def small_cnn() -> kc.Model:
    return kc.Sequential(
        [kc.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
         layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(), layers.Flatten(), layers.Dropout(0.5),
         layers.Dense(10, activation="softmax")],
        name="small_cnn",
    )  # fmt: skip


WORKLOADS: dict[str, Callable[[], kc.Model]] = {"mnist_mlp": mnist_mlp, "small_cnn": small_cnn}
OPTIMIZERS = {"sgd": 0.01, "adam": 0.001}


def data(model: kc.Model, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, 10, n)


def kcompile_model(name: str, opt: str) -> kc.Model:
    kc.set_random_seed(0)
    model = WORKLOADS[name]()
    optimizer = optimizers.SGD(OPTIMIZERS[opt]) if opt == "sgd" else optimizers.Adam(OPTIMIZERS[opt])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


# PyTorch eager -----------------------------------------------------------------------------------
def torch_net(model: kc.Model) -> Any:
    """The network in torch with kcompile's weights: NCHW convolutions, torch's NCHW Flatten (the
    next Dense kernel's rows reordered to match), and logits out (the softmax goes into the loss)."""
    import torch
    from torch import nn

    mods: list[nn.Module] = []
    spatial: tuple[int, int, int] | None = None  # (H, W, C) of the last channels-last feature map
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel, bias = layer.get_weights()
            conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2])
            conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.from_numpy(bias.copy())
            mods += [conv, nn.ReLU()]
            shape = (shape[0] - kernel.shape[0] + 1, shape[1] - kernel.shape[1] + 1, kernel.shape[3])
        elif isinstance(layer, layers.MaxPooling2D):
            mods.append(nn.MaxPool2d(2))
            shape = (shape[0] // 2, shape[1] // 2, shape[2])
        elif isinstance(layer, layers.Flatten):
            mods.append(nn.Flatten())
            spatial = shape  # type: ignore[assignment]
        elif isinstance(layer, layers.Dropout):
            mods.append(nn.Dropout(layer.rate))
        elif isinstance(layer, layers.Dense):
            kernel, bias = layer.get_weights()
            if spatial is not None:  # rows in Keras' (h, w, c) order -> torch's (c, h, w)
                h, w, c = spatial
                kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                spatial = None
            lin = nn.Linear(*kernel.shape)
            lin.weight.data = torch.from_numpy(kernel.T.copy())
            lin.bias.data = torch.from_numpy(bias.copy())
            mods.append(lin)
            if layer.activation == "relu":
                mods.append(nn.ReLU())
        else:
            raise NotImplementedError(type(layer).__name__)
    return nn.Sequential(*mods)


def torch_runner(model: kc.Model, opt: str, x: np.ndarray, y: np.ndarray) -> tuple[Runner, float]:
    """One epoch of the torch training loop, and the loss on the first batch before training."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    net = torch_net(model)
    lr = OPTIMIZERS[opt]
    params = net.parameters()
    optim = torch.optim.SGD(params, lr) if opt == "sgd" else torch.optim.Adam(params, lr, eps=1e-7)  # Keras eps
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x)
    yt = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.eval()
    with torch.no_grad():
        first = float(loss_fn(net(xt[:BATCH]), yt[:BATCH]))
    net.train()

    def epoch() -> None:
        for i in range(0, len(xt), BATCH):
            optim.zero_grad()
            loss = loss_fn(net(xt[i : i + BATCH]), yt[i : i + BATCH])
            loss.backward()
            optim.step()
            loss.item()

    return epoch, first


# Keras fit ---------------------------------------------------------------------------------------
def keras_runner(model: kc.Model, opt: str, x: np.ndarray, y: np.ndarray) -> tuple[Runner, float]:
    import keras

    def clone(layer: Any) -> Any:
        if isinstance(layer, layers.Dense):
            return keras.layers.Dense(layer.units, activation=layer.activation)
        if isinstance(layer, layers.Conv2D):
            return keras.layers.Conv2D(layer.filters, layer.kernel_size, activation=layer.activation)
        if isinstance(layer, layers.MaxPooling2D):
            return keras.layers.MaxPooling2D(layer.pool_size)
        if isinstance(layer, layers.Flatten):
            return keras.layers.Flatten()
        if isinstance(layer, layers.Dropout):
            return keras.layers.Dropout(layer.rate)
        raise NotImplementedError(type(layer).__name__)

    km = keras.Sequential([keras.Input(model.inputs[0].shape[1:])] + [clone(layer) for layer in model.layers])
    km.set_weights(model.get_weights())
    lr = OPTIMIZERS[opt]
    km.compile(
        optimizer=keras.optimizers.SGD(lr) if opt == "sgd" else keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
    )
    first = float(km.evaluate(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0))
    return lambda: km.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False), first


# Timing ------------------------------------------------------------------------------------------
def measure(runners: dict[str, Runner], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner in every round; the runners take turns, in reverse order
    every other round (each after a pause of SETTLE), so a slow spell of the machine falls on
    neighbours alike."""
    for run in runners.values():
        run()  # warm-up: builds kcompile's step, Keras' train function, torch's allocator caches
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds):
        for name in list(runners)[:: -1 if r % 2 else 1]:
            time.sleep(SETTLE)
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return times


def peers(model: kc.Model, opt: str, x: np.ndarray, y: np.ndarray, want: float) -> dict[str, Runner]:
    found: dict[str, Runner] = {}
    for label, make in (("pytorch eager", torch_runner), ("keras fit", keras_runner)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run, first = make(model, opt, x, y)
        except ImportError as err:
            print(f"  ({label} skipped: {err})")
            continue
        if not np.isclose(first, want, rtol=1e-3, atol=1e-4):
            print(f"  !! {label}: first-batch loss {first:.6f} differs from kcompile's {want:.6f}")
        found[label] = run
    return found


def bench(name: str, opt: str, steps: int, rounds: int) -> None:
    model = kcompile_model(name, opt)
    x, y = data(model, steps * BATCH)
    t0 = time.perf_counter()
    want = float(model.evaluate(x[:BATCH], y[:BATCH], batch_size=BATCH, verbose=0))  # builds the step
    build = time.perf_counter() - t0
    print(f"  kcompile step ({opt}): {_onnx_nodes(model)} ONNX nodes, built and loaded in {build * 1e3:.0f} ms")
    runners = peers(model, opt, x, y, want)  # built before kcompile trains: the same start weights
    runners = {"kcompile fit": lambda: model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)} | runners
    times = measure(runners, rounds)
    for label, t in times.items():
        per_step = statistics.median(t) / steps
        ci = median_ci(paired_ratios(t, times["kcompile fit"]))
        verdict = "" if label == "kcompile fit" else ci.verdict()
        print(f"  {opt:<5} {label:<15} {per_step * 1e3:>9.3f} {BATCH / per_step:>11.0f} {ci!s:>22} {verdict:>8}")


def _onnx_nodes(model: kc.Model) -> int:
    from kcompile.training.step import step_onnx

    return len(step_onnx(model._runner.plan.graph).graph.node)


# Profile -----------------------------------------------------------------------------------------
def profile(name: str, opt: str, steps: int) -> None:
    """onnxruntime's profiler on kcompile's training step: the op types and nodes that cost most,
    each node's fastest run (robust to a busy machine)."""
    import onnxruntime as ort

    from kcompile.training.step import step_onnx

    model = kcompile_model(name, opt)
    x, y = data(model, steps * BATCH)
    model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    runner = model._runner
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "step")
        proto = step_onnx(runner.plan.graph)
        runner.session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        runner.bindings = [runner._bind(p) for p in (0, 1)]
        for i in range(steps):
            runner.train_step([x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH].astype(np.int64)])
        with open(runner.session.end_profiling()) as f:
            events = json.load(f)
    runs: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            runs[node].append(e["dur"] / 1e3)
            op_of[node] = e["args"]["op_name"]
    fastest = {node: min(d) for node, d in runs.items()}
    total = sum(fastest.values())
    by_op: dict[str, float] = collections.Counter()
    count: dict[str, int] = collections.Counter()
    for node, t in fastest.items():
        by_op[op_of[node]] += t
        count[op_of[node]] += 1
    print(f"== {name} {opt}: {len(proto.graph.node)} ONNX nodes; sum of per-node fastest times {total:.3f} ms")
    for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {op:<24} {t:>8.3f} ms {t / total:>6.1%}  x{count[op]}")
    print("  slowest nodes:")
    for node, t in sorted(fastest.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {node[:70]:<70} {t:>8.3f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20, help="batches per runner per round")
    parser.add_argument("--only", nargs="*", help="workload names to run")
    parser.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--profile", metavar="WORKLOAD", help="profile kcompile's step instead of timing peers")
    parser.add_argument("--threads", type=int, help="threads of every runner (OMP_NUM_THREADS); default: their own")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by kcompile's step, torch (and so Keras)
    if args.profile:
        for opt in args.optimizers:
            profile(args.profile, opt, args.steps)
        return
    threads = os.environ.get("OMP_NUM_THREADS", "each runner's default")
    print(f"training throughput, batch {BATCH}, {os.cpu_count()} cores, threads: {threads}")
    print("ratio = runner time / kcompile time within a round, median over rounds (> 1: the runner is slower)")
    for name in WORKLOADS:
        if args.only and name not in args.only:
            continue
        print(f"\n== {name}")
        print(f"  {'opt':<5} {'runner':<15} {'ms/step':>9} {'samples/s':>11} {'ratio [95% CI]':>22} {'kcompile':>8}")
        for opt in args.optimizers:
            bench(name, opt, args.steps, args.rounds)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
