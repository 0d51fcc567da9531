"""`kcompile train`: trains from the train block on an .npz, exports, checkpoints, resumes, and
reports bad input without a traceback."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kcompile.cli import main

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits.k"
DATA = ROOT / "examples" / "data" / "digits.npz"


def test_train_exports_a_model_that_classifies_the_test_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, ckpt = tmp_path / "digits.onnx", tmp_path / "ckpt.h5"
    args = [str(DIGITS), "--data", str(DATA), "--epochs", "4", "-o", str(out), "--checkpoint", str(ckpt)]
    assert main(["train", *args, "--verbose", "0"]) == 0
    assert "test: loss" in capsys.readouterr().out
    data = np.load(DATA)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(None, {"img": data["x_test"]})
    assert (probs.argmax(-1) == data["y_test"]).mean() > 0.9
    assert ckpt.exists()
    # Resuming from the checkpoint continues training (the optimizer state comes along).
    assert (
        main(["train", str(DIGITS), "--data", str(DATA), "--epochs", "1", "--resume", str(ckpt), "--verbose", "0"]) == 0
    )


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib (the demo extra) is missing")
def test_train_draws_the_curve(tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    assert (
        main(["train", str(DIGITS), "--data", str(DATA), "--epochs", "1", "--curve", str(png), "--verbose", "0"]) == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nodata", "no such data file"),
        ("badkeys", "needs x_train and y_train"),
        ("notnpz", "not a readable .npz"),
        ("notrain", "has no train block"),
    ],
)
def test_train_errors(tmp_path: Path, setup: str, message: str) -> None:
    source, data = str(DIGITS), tmp_path / "d.npz"
    if setup == "badkeys":
        np.savez(data, a=np.zeros(3))
    elif setup == "notnpz":
        data.write_text("not an archive")
    elif setup == "notrain":
        source = str(ROOT / "examples" / "classifier.k")
        np.savez(data, x=np.zeros((4, 784), np.float32), y=np.zeros(4, np.int64))
    out = tmp_path / "o.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "kcompile", "train", source, "--data", str(data), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
