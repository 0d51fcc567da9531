"""The `kcompile` command line.

    kcompile SOURCE -o OUT.onnx [--emit ir|onnx|summary] [--learning-phase 0|1|dynamic] [--opset N]

SOURCE is `path/to/file.py:NAME` (a Model object, or a function returning one, in a Python file).
Errors print as `kcompile: error: ...` without a traceback and exit with status 1; the output
file is written atomically, so a failed run leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import KCompileError

EMITS = ("onnx", "ir", "summary")

DESCRIPTION = """\
Compile a Keras-style model to ONNX.

SOURCE names the model:
  path/to/model.py:NAME   a kc.Model (or a function returning one) defined in a Python file

Without -o the chosen --emit form is printed to standard output."""

EPILOG = """\
examples:
  kcompile examples/mnist_mlp.py:mnist -o mnist.onnx
  kcompile examples/mnist_mlp.py:replicas --emit summary
  kcompile examples/mnist_mlp.py:mnist --emit ir"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcompile", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", metavar="SOURCE", help="the model to compile: path/to/file.py:NAME")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result here (atomically)")
    p.add_argument(
        "--emit",
        choices=EMITS,
        default=None,
        help="what to produce: onnx (the default with -o; binary to OUT, text to stdout), "
        "ir (kcompile's IR as text), summary (layer table and compile statistics)",
    )
    p.add_argument(
        "--learning-phase",
        choices=("0", "1", "dynamic"),
        default="0",
        help="0: inference (Dropout off, BatchNormalization with moving statistics; the default); "
        "1: training behaviour; dynamic: keep a bool 'learning_phase' input in the ONNX graph",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset to target (21..26, default 21)")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks of internal errors")
    p.add_argument("--version", action="version", version=f"kcompile {__version__}")
    return p


def load_model(source: str) -> Any:
    """Resolve SOURCE to a kc.Model."""
    from .model import Model

    path, sep, attr = source.rpartition(":")
    if not sep or not path or os.path.splitext(path)[1] != ".py":
        raise KCompileError(f"cannot tell what model {source!r} names; write path/to/file.py:NAME")
    if not os.path.isfile(path):
        raise KCompileError(f"{path}: no such file")
    try:
        namespace = runpy.run_path(path, run_name="__kcompile__")
    except KCompileError:
        raise
    except SyntaxError as err:
        raise KCompileError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    except Exception as err:
        raise KCompileError(f"{path}: running the file failed: {type(err).__name__}: {err}") from None
    if attr not in namespace:
        names = sorted(k for k, v in namespace.items() if isinstance(v, Model))
        hint = f"; models defined there: {', '.join(names)}" if names else ""
        raise KCompileError(f"{path} defines no {attr!r}{hint}")
    obj = namespace[attr]
    if callable(obj) and not isinstance(obj, Model):
        obj = obj()
    if not isinstance(obj, Model):
        raise KCompileError(f"{path}:{attr} is a {type(obj).__name__}, not a kc.Model")
    return obj


def _summary(model: Any, compiled: Any) -> str:
    lines = [model.summary_text(), "", "Compiled:"]
    lines.append(f"  IR nodes: {len(compiled.graph.nodes)}  ONNX nodes: {compiled.node_count}")
    lines.append(f"  ONNX initializers: {compiled.initializer_count}  parameters: {compiled.count_params():,}")
    devices = sorted({n.device or "-" for n in compiled.graph.nodes})
    lines.append(f"  devices: {', '.join(devices)}")
    for key, value in sorted(compiled.graph.metadata.items()):
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from .api import compile as compile_model
    from .fileio import write_atomic

    model = load_model(args.source)
    emit = args.emit or "onnx"
    if emit == "ir":
        from .api import optimize

        graph = model.to_graph() if args.learning_phase == "dynamic" else optimize(model.to_graph(), args.learning_phase)
        text = str(graph) + "\n"
        write_atomic(args.output, text) if args.output else sys.stdout.write(text)
        return 0
    compiled = compile_model(model, learning_phase=args.learning_phase, opset=args.opset)
    if emit == "summary":
        text = _summary(model, compiled) + "\n"
        write_atomic(args.output, text) if args.output else sys.stdout.write(text)
        return 0
    if args.output:
        compiled.save(args.output)
        print(f"wrote {args.output}: {compiled.node_count} nodes, {compiled.count_params():,} parameters")
    else:
        import onnx

        sys.stdout.write(onnx.printer.to_text(compiled.onnx_model) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except KCompileError as err:
        print(f"kcompile: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kcompile: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: report it briefly, never as a bare traceback
        if "--traceback" in argv:
            raise
        print(
            f"kcompile: internal error: {type(err).__name__}: {err}\n"
            "(run again with --traceback for details; please report it)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
