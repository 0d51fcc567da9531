"""Training throughput at batch 64 (samples/s): kcompile `fit` vs PyTorch eager vs Keras `fit`.

    .venv/bin/python examples/train_bench.py                  # kcompile (and torch if importable)
    KERAS_BACKEND=torch /root/keras-venv/bin/python examples/train_bench.py --peers   # torch, Keras

Models: the MNIST MLP (784-128-128-10, ReLU, Dropout 0.5) and the small MNIST CNN (Conv 32 3x3,
MaxPool, Conv 64 3x3, MaxPool, Flatten, Dropout 0.5, Dense 10), softmax + sparse categorical
cross-entropy, optimizers SGD(0.01) and Adam(0.001), random data, one warm-up epoch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

BATCH = 64
N = {"mlp": 64 * 200, "cnn": 64 * 40}


def data(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (N[kind], 784) if kind == "mlp" else (N[kind], 28, 28, 1)
    return rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, N[kind])


def bench_kcompile(kind: str, opt: str) -> float:
    import kcompile as kc
    from kcompile import layers as L
    from kcompile.training import optimizers

    if kind == "mlp":
        model = kc.Sequential(
            [kc.Input(shape=(784,)), L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(128, activation="relu"),
             L.Dropout(0.5), L.Dense(10, activation="softmax")]
        )  # fmt: skip
    else:
        model = kc.Sequential(
            [kc.Input(shape=(28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
             L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dropout(0.5),
             L.Dense(10, activation="softmax")]
        )  # fmt: skip
    model.compile(
        optimizer=optimizers.SGD(0.01) if opt == "sgd" else optimizers.Adam(0.001),
        loss="sparse_categorical_crossentropy",
    )
    x, y = data(kind)
    model.fit(x[: BATCH * 5], y[: BATCH * 5], batch_size=BATCH, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - t0)


def bench_torch(kind: str, opt: str) -> float:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "mlp":
        net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 128), nn.ReLU(),
                            nn.Dropout(0.5), nn.Linear(128, 10))  # fmt: skip
    else:
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10))  # fmt: skip
    optim = torch.optim.SGD(net.parameters(), 0.01) if opt == "sgd" else torch.optim.Adam(net.parameters(), 0.001)
    x, y = data(kind)
    xt = torch.from_numpy(x if kind == "mlp" else x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()

    def epoch(n: int) -> None:
        for i in range(0, n, BATCH):
            optim.zero_grad()
            loss = loss_fn(net(xt[i : i + BATCH]), yt[i : i + BATCH])
            loss.backward()
            optim.step()
            float(loss)  # what a progress bar reads

    epoch(BATCH * 5)
    t0 = time.perf_counter()
    epoch(len(x))
    return len(x) / (time.perf_counter() - t0)


def bench_keras(kind: str, opt: str) -> float:
    import keras
    from keras import layers as L

    if kind == "mlp":
        model = keras.Sequential([keras.Input((784,)), L.Dense(128, activation="relu"), L.Dropout(0.5),
                                  L.Dense(128, activation="relu"), L.Dropout(0.5),
                                  L.Dense(10, activation="softmax")])  # fmt: skip
    else:
        model = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
                                  L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dropout(0.5),
                                  L.Dense(10, activation="softmax")])  # fmt: skip
    model.compile(optimizer=keras.optimizers.SGD(0.01) if opt == "sgd" else keras.optimizers.Adam(0.001),
                  loss="sparse_categorical_crossentropy")  # fmt: skip
    x, y = data(kind)
    model.fit(x[: BATCH * 5], y[: BATCH * 5], batch_size=BATCH, epochs=1, verbose=0)
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", action="store_true", help="measure PyTorch eager and Keras fit (Keras venv)")
    args = parser.parse_args()
    runs = [("torch", bench_torch), ("keras", bench_keras)] if args.peers else [("kcompile", bench_kcompile)]
    for kind in ("mlp", "cnn"):
        for opt in ("sgd", "adam"):
            for name, fn in runs:
                try:
                    rate = fn(kind, opt)
                except ImportError as err:
                    print(f"{name:9s} {kind} {opt}: skipped ({err})", file=sys.stderr)
                    continue
                print(f"{name:9s} {kind:4s} {opt:5s} {rate:10.0f} samples/s  ({BATCH / rate * 1e3:.3f} ms/step)")


if __name__ == "__main__":
    main()
