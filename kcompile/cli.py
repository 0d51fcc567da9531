"""The `kcompile` command line.

    kcompile SOURCE [-o OUT] [--model NAME] [--emit onnx|ir|summary|dot] [--learning-phase 0|1|dynamic]
                    [-O LEVEL | --passes A,B] [--print-after PASS] [--time-passes] [--explain-rewrites]
                    [--input-layout NHWC|NCHW] [--opset N]
    kcompile check SOURCE [--model NAME] [same options]
    kcompile train SOURCE --data DATA.npz [-o OUT] [--epochs N] ...   (see train_cli.py)

SOURCE is a `.k` file (`model.k`, or `model.k:NAME`) or a Python file (`file.py:NAME`: a Model
object, or a function returning one). `check` parses and builds every model of the source,
verifies their IR and lowers them to ONNX, and writes nothing.

Errors print as `kcompile: error: file:line:col: message`, the source line and a caret, without a
traceback, and exit with status 1 (internal errors: 2). Output files are written atomically, so a
failed run leaves no file, and no partial file, behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import KCompileError
from .loading import Source, resolve

EMITS = ("onnx", "ir", "summary", "dot")

DESCRIPTION = """\
Compile a Keras-style model to ONNX.

  kcompile SOURCE [options]          compile (or print --emit's form of) one model
  kcompile check SOURCE [--model N]  parse, build and verify every model of SOURCE; write nothing
  kcompile train SOURCE --data D.npz train from the model's train block (kcompile train --help)

SOURCE names the model:
  path/to/model.k          a .k model file: its only model, or the one --model names
  path/to/model.k:NAME     the same as path/to/model.k --model NAME
  path/to/model.py:NAME    a kc.Model (or a function returning one) defined in a Python file

Without -o the chosen --emit form is printed to standard output."""

EPILOG = """\
examples:
  kcompile examples/mnist.k -o mnist.onnx
  kcompile examples/replicas.k --model replicas --emit ir
  kcompile examples/replicas.k:replicas --emit dot -o replicas.dot   (then: dot -Tsvg replicas.dot)
  kcompile check examples/blocks.k
  kcompile train examples/digits.k --data examples/data/digits.npz -o digits.onnx --curve curve.png
  kcompile examples/mnist_mlp.py:mnist --emit summary"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kcompile",
        usage="kcompile [check] SOURCE [-o OUT] [--model NAME] [--emit {onnx,ir,summary,dot}] "
        "[--learning-phase {0,1,dynamic}] [-O LEVEL | --passes A,B,...] [--print-after PASS] [--time-passes] "
        "[--explain-rewrites] [--input-layout {NHWC,NCHW}] [--opset N] [--traceback]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE", help="the model: path/to/model.k[:NAME] or path/to/file.py:NAME")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result here (atomically); not with check")
    p.add_argument(
        "--model",
        metavar="NAME",
        help="which model of SOURCE to use (needed when a .k file defines several; with check: verify only this one)",
    )
    p.add_argument(
        "--emit",
        choices=EMITS,
        default=None,
        help="what to produce: onnx (the default; binary to OUT, text to stdout), "
        "ir (kcompile's IR as text), summary (layer table and compile statistics), "
        "dot (the layer graph for Graphviz, nodes coloured by device)",
    )
    p.add_argument(
        "--learning-phase",
        choices=("0", "1", "dynamic"),
        default="0",
        help="0: inference (Dropout off, BatchNormalization with moving statistics; the default); "
        "1: training behaviour; dynamic: keep a bool 'learning_phase' input in the ONNX graph",
    )
    from kcompile.passes import PASSES

    p.add_argument(
        "-O",
        dest="level",
        type=int,
        choices=range(4),
        default=2,
        metavar="LEVEL",
        help="optimisation level: 0 dead-code elimination only; 1 adds simplify, constant folding and CSE; "
        "2 (the default) adds layout and fusion; 3 runs layout and fusion once more",
    )
    p.add_argument(
        "--passes",
        metavar="A,B,...",
        help=f"run exactly these passes instead of a level's pipeline (passes: {', '.join(PASSES)})",
    )
    p.add_argument("--print-after", metavar="PASS", help="print the IR after pass PASS (or 'all') to standard error")
    p.add_argument(
        "--time-passes", action="store_true", help="print each pass's time and node counts to standard error"
    )
    p.add_argument(
        "--explain-rewrites",
        action="store_true",
        help="print why rewrite rules did not apply where they almost did, to standard error",
    )
    p.add_argument(
        "--input-layout",
        choices=("NHWC", "NCHW"),
        default="NHWC",
        help="how image inputs are fed: NHWC (channels last, Keras' default) or NCHW (no input transposes)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset to target (21..26, default 21)")
    p.add_argument("--traceback", action="store_true", help="show Python tracebacks of internal errors")
    p.add_argument("--version", action="version", version=f"kcompile {__version__}")
    return p


def load_model(source: str, model: str | None = None) -> Any:
    """Resolve SOURCE (and --model) to a kc.Model."""
    return resolve(source, model).model


def _summary(src: Source, compiled: Any) -> str:
    model = src.model
    lines = [model.summary_text(), "", "Compiled:"]
    lines.append(f"  IR nodes: {len(compiled.graph.nodes)}  ONNX nodes: {compiled.node_count}")
    lines.append(f"  ONNX initializers: {compiled.initializer_count}  parameters: {compiled.count_params():,}")
    devices = sorted({n.device or "-" for n in compiled.graph.nodes})
    lines.append(f"  devices: {', '.join(devices)}")
    for key, value in sorted(compiled.graph.metadata.items()):
        lines.append(f"  {key}: {value}")
    spec = getattr(model, "train_spec", None)
    if spec is not None:
        lines += ["", f"Training ({spec.loc}):", f"  {spec.summary()}"]
    return "\n".join(lines)


def _pass_options(args: argparse.Namespace) -> dict[str, Any]:
    """kc.compile/kc.optimize keyword arguments for the pass flags, with a PassManager to report."""
    from kcompile.passes import PassManager, pipeline

    def to_stderr(text: str) -> None:
        print(text, file=sys.stderr)

    names = [n.strip() for n in args.passes.split(",") if n.strip()] if args.passes else None
    pipeline(args.level, args.learning_phase, names, args.input_layout)  # bad flags fail here, not per model
    manager = PassManager([], print_after=args.print_after, printer=to_stderr)
    return {
        "learning_phase": args.learning_phase,
        "level": args.level,
        "passes": names,
        "manager": manager,
        "input_layout": args.input_layout,
    }


def _report_passes(args: argparse.Namespace, options: dict[str, Any]) -> None:
    manager = options["manager"]
    if args.time_passes and manager.records:
        print(manager.timing_table(), file=sys.stderr)
    if args.explain_rewrites:
        for line in manager.explanations() or ["(every rewrite that matched applied)"]:
            print(line, file=sys.stderr)


def _emit(text: str, output: str | None) -> None:
    from .fileio import write_atomic

    write_atomic(output, text) if output else sys.stdout.write(text)


def run_check(args: argparse.Namespace) -> int:
    """Build every model of the source (or the one named), verify its IR and lower it to ONNX."""
    from .api import compile as compile_model
    from .loading import sources

    if args.output:
        raise KCompileError("check writes nothing; drop -o")
    _pass_options(args)
    targets = sources(args.source, args.model)
    for src in targets:
        options = _pass_options(args)
        try:
            compile_model(src.model, opset=args.opset, **options)
        except KCompileError as err:
            raise src.locate(err) from None
        if args.time_passes or args.explain_rewrites:
            print(f"// {src.name}", file=sys.stderr)
            _report_passes(args, options)
    path = targets[0].path if targets else args.source
    print(f"{path}: ok ({', '.join(src.name for src in targets) or 'no models'})")
    return 0


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "train":
        from .train_cli import run_train

        return run_train(argv[1:])
    check = bool(argv) and argv[0] == "check"
    args = build_parser().parse_args(argv[1:] if check else argv)
    if check:
        return run_check(args)
    from .api import compile as compile_model

    options = _pass_options(args)
    src = resolve(args.source, args.model)
    model = src.model
    emit = args.emit or "onnx"
    try:
        if emit == "dot":
            from .lang.dot import model_to_dot

            _emit(model_to_dot(model), args.output)
            return 0
        if emit == "ir":
            from .api import optimize

            graph = optimize(model.to_graph(), **options)
            _report_passes(args, options)
            _emit(str(graph) + "\n", args.output)
            return 0
        compiled = compile_model(model, opset=args.opset, **options)
    except KCompileError as err:
        raise src.locate(err) from None
    _report_passes(args, options)
    if emit == "summary":
        _emit(_summary(src, compiled) + "\n", args.output)
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
