"""`kcompile model.k ...` and `kcompile check model.k`: exit status, messages, files written or not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from kcompile.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BAD = "model m {\n    x = Input(shape=(4,))\n    return Dens(3)(x)\n}\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compiles_a_k_file_to_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mnist.onnx"
    rc, stdout, stderr = run(capsys, EXAMPLES / "mnist.k", "-o", out)
    assert (rc, stderr) == (0, "")
    assert stdout.startswith(f"wrote {out}: ")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["img"]


def test_several_models_need_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.onnx"
    rc, stdout, stderr = run(capsys, EXAMPLES / "replicas.k", "-o", out)
    assert rc == 1 and stdout == ""
    assert "defines 2 models (siamese, replicas); choose one (--model NAME" in stderr
    assert not out.exists()
    rc, _, stderr = run(capsys, EXAMPLES / "replicas.k", "--model", "replicas", "-o", out)
    assert (rc, stderr) == (0, "") and out.exists()


def test_model_may_be_named_in_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, f"{EXAMPLES / 'replicas.k'}:siamese", "--emit", "ir")
    assert rc == 0 and stdout.startswith("graph siamese(")
    rc, _, stderr = run(capsys, f"{EXAMPLES / 'replicas.k'}:siamese", "--model", "replicas")
    assert rc == 1 and "names model 'siamese' but --model names 'replicas'" in stderr


def test_emit_ir_shows_three_devices(capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, EXAMPLES / "replicas.k", "--model", "replicas", "--emit", "ir")
    assert rc == 0
    assert {m for m in re.findall(r"device (\w+:\d+)", stdout)} == {"gpu:0", "gpu:1", "cpu:0"}
    assert "replicas.k:16:" in stdout  # nodes carry .k locations


def test_emit_dot_colours_nodes_by_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "replicas.dot"
    rc, _, _ = run(capsys, EXAMPLES / "replicas.k", "--model", "replicas", "--emit", "dot", "-o", out)
    assert rc == 0
    text = out.read_text()
    assert text.startswith('digraph "replicas" {') and text.rstrip().endswith("}")
    placed = re.findall(r'fillcolor="(#\w+)", tooltip="([^"]+)"', text)
    colours = {device: colour for colour, device in placed}
    assert set(colours) == {"gpu:0", "gpu:1", "cpu:0"} and len(set(colours.values())) == 3
    assert text.count("subgraph cluster_") == 3  # two classifier calls and the legend


def test_emit_summary_includes_training(capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, _ = run(capsys, EXAMPLES / "mnist.k", "--emit", "summary")
    assert rc == 0 and 'Model: "mnist"' in stdout
    assert "optimizer SGD(learning_rate=0.5); loss categorical_crossentropy; metrics accuracy" in stdout


def test_check_builds_every_model_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, stderr = run(capsys, "check", EXAMPLES / "blocks.k")
    assert (rc, stderr) == (0, "")
    assert stdout == f"{EXAMPLES / 'blocks.k'}: ok (cnn, finetune)\n"
    rc, stdout, _ = run(capsys, "check", EXAMPLES / "replicas.k", "--model", "replicas")
    assert rc == 0 and stdout.endswith("ok (replicas)\n")
    rc, _, stderr = run(capsys, "check", EXAMPLES / "mnist.k", "-o", tmp_path / "x")
    assert rc == 1 and "check writes nothing" in stderr and not (tmp_path / "x").exists()


def test_errors_are_located_without_traceback_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.k"
    src.write_text(BAD)
    out = tmp_path / "bad.onnx"
    for argv in ([src, "-o", out], ["check", src], [src, "--emit", "dot", "-o", out]):
        rc, stdout, stderr = run(capsys, *argv)
        assert rc == 1 and stdout == ""
        assert stderr == (
            f"kcompile: error: {src}:3:12: unknown layer 'Dens'; did you mean 'Dense'?\n"
            "        return Dens(3)(x)\n"
            "               ^\n"
        )
        assert not out.exists()


def test_a_failed_run_keeps_the_previous_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "bad.k"
    src.write_text(BAD)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    assert run(capsys, src, "-o", out)[0] == 1
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["bad.k", "model.onnx"]  # no temporary file left either


def test_missing_and_unknown_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, stderr = run(capsys, tmp_path / "nope.k")
    assert rc == 1 and "nope.k: no such file" in stderr
    rc, _, stderr = run(capsys, tmp_path / "model.txt")
    assert rc == 1 and "give a .k model file, a Keras .keras file or a .py file" in stderr
    rc, _, stderr = run(capsys, EXAMPLES / "replicas.k", "--model", "replica")
    assert rc == 1 and "has no model 'replica'; did you mean 'replicas'?" in stderr


def test_python_sources_still_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    rc, _, stderr = run(capsys, f"{EXAMPLES / 'mnist_mlp.py'}:mnist", "-o", out)
    assert (rc, stderr) == (0, "") and out.exists()
    rc, stdout, _ = run(capsys, EXAMPLES / "mnist_mlp.py", "--model", "replicas", "--emit", "dot")
    assert rc == 0 and stdout.startswith('digraph "replicas"')
    rc, _, stderr = run(capsys, EXAMPLES / "mnist_mlp.py")
    assert rc == 1 and "name the model" in stderr


def test_pass_flags(capsys: pytest.CaptureFixture[str]) -> None:
    rc, stdout, stderr = run(capsys, EXAMPLES / "replicas.k:replicas", "-O0", "--emit", "ir", "--time-passes")
    assert rc == 0 and "gemm" not in stdout and "matmul" in stdout
    assert stderr.startswith("pass ") and "\ndce " in stderr and "total" in stderr
    rc, stdout, stderr = run(capsys, EXAMPLES / "mnist.k", "--emit", "ir", "--print-after", "fusion")
    assert rc == 0 and stdout.startswith("graph mnist(") and stderr.startswith("// after fusion\ngraph mnist(")
    rc, _, stderr = run(capsys, "check", EXAMPLES / "blocks.k", "--passes", "simplify,dce", "--explain-rewrites")
    assert rc == 0 and "// cnn" in stderr and "// finetune" in stderr
    rc, _, stderr = run(capsys, EXAMPLES / "mnist.k", "--passes", "fusio")
    assert rc == 1 and stderr.startswith("kcompile: error: unknown pass 'fusio'; did you mean 'fusion'?")


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
    for word in ("check SOURCE", "--model NAME", "dot", "path/to/model.k:NAME", "nodes coloured by device", "-O LEVEL"):
        assert word in text


@pytest.mark.slow
def test_the_installed_command_reports_errors_without_traceback(tmp_path: Path) -> None:
    src = tmp_path / "bad.k"
    src.write_text(BAD)
    proc = subprocess.run(
        [sys.executable, "-m", "kcompile", "check", str(src)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{src}:3:12: unknown layer 'Dens'" in proc.stderr
