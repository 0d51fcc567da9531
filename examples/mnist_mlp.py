"""The classic Keras MNIST classifier, and a two-replica version of it.

    kcompile examples/mnist_mlp.py:mnist -o mnist.onnx
    python examples/mnist_mlp.py          # compile both, run them in onnxruntime, report

`replicas` calls one Sequential classifier twice, under `device("cpu:0")` and `device("gpu:0")`,
and averages the two outputs (the multi-GPU replica pattern): both calls share one set of
weights, so the ONNX file stores them once.
"""

from __future__ import annotations

import numpy as np

import kcompile as kc
from kcompile import layers

kc.set_random_seed(1)

# mnist: 784-128-128-10 with Dropout 0.5 ------------------------------------------------------
img = kc.Input(shape=(784,), name="img")
x = layers.Dense(128, activation="relu")(img)
x = layers.Dropout(0.5)(x)
x = layers.Dense(128, activation="relu")(x)
x = layers.Dropout(0.5)(x)
preds = layers.Dense(10, activation="softmax")(x)
mnist = kc.Model(img, preds, name="mnist")

# replicas: one classifier, two placements, averaged ------------------------------------------
classifier = kc.Sequential(
    [kc.Input(shape=(784,)), layers.Dense(32, activation="relu"), layers.Dense(10, activation="softmax")],
    name="classifier",
)
x_in = kc.Input(shape=(784,), name="x")
with kc.device("cpu:0"):
    y0 = classifier(x_in)
with kc.device("gpu:0"):
    y1 = classifier(x_in)
with kc.device("cpu:0"):
    averaged = 0.5 * (y0 + y1)
replicas = kc.Model(x_in, averaged, name="replicas")


def report(model: kc.Model, batch: int = 64) -> None:
    compiled = kc.compile(model)
    path = f"build/{model.name}.onnx"
    compiled.save(path)
    x = np.random.default_rng(0).random((batch, 784), dtype=np.float32)
    y = compiled(x)
    latency = compiled.latency(x)
    one = compiled.latency(x[:1])
    devices = sorted({n.device for n in compiled.graph.nodes if n.device})
    print(f"{model.name}: wrote {path}")
    print(f"  output shape {y.shape}, rows sum to 1: {bool(np.allclose(y.sum(axis=1), 1, atol=1e-5))}")
    counts = f"ONNX nodes {compiled.node_count}, initializers {compiled.initializer_count}"
    print(f"  {counts}, params {compiled.count_params():,}")
    print(f"  devices {', '.join(devices) or '-'}")
    print(f"  latency: batch 1 {one * 1e3:.3f} ms, batch {batch} {latency * 1e3:.3f} ms (onnxruntime, median)")


if __name__ == "__main__":
    import os

    os.makedirs("build", exist_ok=True)
    mnist.summary()
    report(mnist)
    print()
    replicas.summary()
    report(replicas)
