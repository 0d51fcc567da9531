"""`kcompile train`: train a model from its `train` block on arrays from an `.npz` file.

    kcompile train examples/digits.k --data examples/data/digits.npz -o digits.onnx
        [--model NAME] [--epochs N] [--batch-size B] [--resume ckpt.h5] [--checkpoint ckpt.h5]
        [--curve curve.png] [--verbose 0|1|2]

The `.npz` holds `x_train` and `y_train` (or `x` and `y`), and optionally `x_test` and `y_test`,
which serve as validation data and are evaluated at the end. It is read with pickling off. The
optimizer, loss, metrics, batch size and epochs come from the model's `train` block; flags
override the last two. `-o` exports the trained model for inference (learning phase 0);
`--checkpoint` keeps the weights and optimizer state after every epoch, `--resume` continues
from such a file.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import KCompileError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcompile train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", metavar="SOURCE", help="a .k file (or file.k:NAME) whose model has a train block")
    p.add_argument("--data", required=True, help=".npz with x_train, y_train (or x, y) and optionally x_test, y_test")
    p.add_argument("--model", help="the model to train when the file defines several")
    p.add_argument("-o", "--output", help="export the trained model to this ONNX file")
    p.add_argument("--epochs", type=int, help="override the train block's epochs")
    p.add_argument("--batch-size", type=int, help="override the train block's batch_size")
    p.add_argument("--resume", help="start from this checkpoint (weights and optimizer state)")
    p.add_argument("--checkpoint", help="write weights and optimizer state here after every epoch")
    p.add_argument("--curve", help="save the training curves as a PNG (needs matplotlib)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="progress output, as Keras' fit")
    return p


def load_arrays(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise KCompileError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise KCompileError(f"{path}: not a readable .npz of arrays ({err})") from None
    for a, b in (("x_train", "y_train"), ("x", "y")):
        if a in arrays and b in arrays:
            out = {"x": arrays[a], "y": arrays[b]}
            if "x_test" in arrays and "y_test" in arrays:
                out.update(x_test=arrays["x_test"], y_test=arrays["y_test"])
            return out
    raise KCompileError(f"{path} holds {sorted(arrays)}; it needs x_train and y_train (or x and y)")


def save_curve(history: dict[str, list[float]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KCompileError("--curve needs matplotlib (pip install matplotlib)") from None
    from .fileio import write_atomic

    metrics = [k for k in history if not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        epochs = range(1, len(history[name]) + 1)
        ax.plot(epochs, history[name], marker="o", label=name)
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], marker="o", label=f"val_{name}")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def run_train(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from .loading import resolve
    from .training.callbacks import ModelCheckpoint

    src = resolve(args.source, args.model)
    model = src.model
    spec: Any = getattr(model, "train_spec", None)
    if spec is None:
        raise KCompileError(f"{src.path}: model '{src.name}' has no train block (train {src.name} {{ ... }})")
    data = load_arrays(args.data)
    try:
        model.compile(**spec.compile_args())
        if args.resume:
            model.load_weights(args.resume)
        fit = spec.fit_args()
        if args.epochs is not None:
            fit["epochs"] = args.epochs
        if args.batch_size is not None:
            fit["batch_size"] = args.batch_size
        if "x_test" in data:
            fit["validation_data"] = (data["x_test"], data["y_test"])
            fit.pop("validation_split", None)
        callbacks = [ModelCheckpoint(args.checkpoint)] if args.checkpoint else []
        history = model.fit(data["x"], data["y"], callbacks=callbacks, verbose=args.verbose, **fit)
        if "x_test" in data:
            results = model.evaluate(data["x_test"], data["y_test"], verbose=0, return_dict=True)
            print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        if args.curve:
            save_curve(history.history, args.curve)
            print(f"wrote {args.curve}")
        if args.output:
            model.export(args.output)
            print(f"wrote {args.output}")
    except KCompileError as err:
        raise src.locate(err) from None
    return 0
