"""The `kcompile` command on Python sources: outputs, emits, and errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from kcompile.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mnist_mlp.py"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcompile", *args], capture_output=True, text=True, cwd=cwd)


def test_help_documents_every_flag() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for flag in ("-o", "--emit", "--learning-phase", "--opset", "--version"):
        assert flag in done.stdout


def test_compiles_python_model_to_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mnist.onnx"
    assert main([f"{EXAMPLE}:mnist", "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].name == "img"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("emit", "needle"), [("ir", "graph replicas("), ("summary", "Total params"), ("onnx", "ir_version")]
)
def test_emit_forms(emit: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"{EXAMPLE}:replicas", "--emit", emit]) == 0
    assert needle in capsys.readouterr().out


def test_emit_ir_shows_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"{EXAMPLE}:replicas", "--emit", "ir"]) == 0
    text = capsys.readouterr().out
    assert "device cpu:0" in text and "device gpu:0" in text


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad_model.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "attr", "message"),
    [
        (
            """
            import kcompile as kc
            a = kc.Input(shape=(4,))
            b = kc.Input(shape=(5,))
            y = kc.layers.add([a, b])
            """,
            "y",
            "cannot broadcast float32[None, 4] with float32[None, 5]",
        ),
        ("import kcompile as kc\nmodel = 3\n", "model", "is a int, not a kc.Model"),
        ("import kcompile as kc\n", "nope", "defines no 'nope'"),
        ("def f(:\n", "f", "syntax error"),
        ("raise RuntimeError('boom')\n", "m", "running the file failed: RuntimeError: boom"),
    ],
)
def test_errors_are_reported_without_traceback_and_no_file(tmp_path: Path, body: str, attr: str, message: str) -> None:
    src = write(tmp_path, body)
    out = tmp_path / "out.onnx"
    done = run_cli(f"{src}:{attr}", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad_model.py"]


def test_shape_error_points_at_the_python_line(tmp_path: Path) -> None:
    src = write(
        tmp_path,
        """
        import kcompile as kc
        a = kc.Input(shape=(4,))
        y = kc.layers.Dense(3)(kc.layers.Reshape((2, 3))(a))
        """,
    )
    done = run_cli(f"{src}:y", "-o", str(tmp_path / "o.onnx"))
    assert done.returncode == 1
    assert f"{src}:4: Reshape layer 'reshape'" in done.stderr
    assert "cannot reshape (None, 4) to (None, 2, 3)" in done.stderr
    assert "y = kc.layers.Dense(3)(kc.layers.Reshape((2, 3))(a))" in done.stderr


def test_bad_arguments_exit_non_zero(tmp_path: Path) -> None:
    assert run_cli("model_without_attr.py").returncode != 0
    done = run_cli(f"{EXAMPLE}:mnist", "--opset", "30")
    assert done.returncode == 1 and "opset 30 is not supported" in done.stderr
