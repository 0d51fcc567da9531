"""Model sources -> `kc.Model`: `kc.load(...)` and the CLI's SOURCE argument.

    kc.load("examples/mnist.k")                        # the file's only model
    kc.load("examples/replicas.k", model="replicas")   # one of several
    kc.load("examples/replicas.k:replicas")            # the same, as the CLI writes it
    kc.load("examples/mnist_mlp.py", model="mnist")    # a kc.Model (or a function making one) in Python
    kc.load("model.keras")                             # a Keras 3 archive (see `keras_import`)

A `.k` file goes through `kcompile.lang` (parsed and interpreted, never executed as Python); a
`.py` file is run, as `python file.py` would. A model from a `.k` file whose `train NAME { ... }`
block exists carries its settings as `model.train_spec` (a `kcompile.lang.TrainSpec`, else None).
"""

from __future__ import annotations

import os
import runpy
from dataclasses import dataclass
from typing import Any

from .errors import KCompileError, SourceLoc
from .model import Model

SUFFIXES = (".k", ".py", ".keras")


@dataclass
class Source:
    """A resolved model source: the chosen model and, for `.k` files, the whole program."""

    path: str
    model: Model
    name: str
    program: Any = None  # kcompile.lang.Program for .k sources
    loc: SourceLoc | None = None  # where the model is defined (for errors found later)

    def locate(self, err: KCompileError) -> KCompileError:
        """Give an error found after loading (verification, lowering) the model's location."""
        if err.loc is None and self.loc is not None:
            err.loc = self.loc
        return err


def split_source(source: str, model: str | None = None) -> tuple[str, str | None]:
    """`file.k:NAME` -> (`file.k`, `NAME`); `model=` wins when both name the same model."""
    path, name = source, None
    head, sep, tail = source.rpartition(":")
    if sep and os.path.splitext(head)[1] in SUFFIXES and tail:
        path, name = head, tail
    if model is not None and name is not None and model != name:
        raise KCompileError(f"{source} names model '{name}' but --model names '{model}'; give one of them")
    return path, model or name


def _check_path(path: str) -> str:
    ext = os.path.splitext(path)[1]
    if ext not in SUFFIXES:
        raise KCompileError(
            f"cannot tell what {path!r} is; give a .k model file, a Keras .keras file or a .py file "
            "(path/to/file.py:NAME)"
        )
    if not os.path.exists(path):
        raise KCompileError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise KCompileError(f"{path}: not a file")
    return ext


def load_program(path: str) -> Any:
    """Load a `.k` file and build all its models: a `kcompile.lang.Program`."""
    if _check_path(path) != ".k":
        raise KCompileError(f"{path} is not a .k file")
    from .lang import load_program as load_k

    return load_k(path)


def resolve(source: str, model: str | None = None) -> Source:
    """Load SOURCE (`file.k`, `file.k:NAME`, `file.py:NAME`) and pick the model."""
    path, name = split_source(source, model)
    ext = _check_path(path)
    if ext == ".keras":
        from .keras_import import load_keras

        keras_model = load_keras(path)
        if name is not None and name != keras_model.name:
            raise KCompileError(f"{path} holds model '{keras_model.name}', not '{name}'")
        return Source(path, keras_model, keras_model.name)
    if ext == ".k":
        program = load_program(path)
        chosen = program.model(name)
        chosen_name = name or program.own[0]
        chosen.train_spec = program.train_spec(chosen_name)  # type: ignore[attr-defined]
        return Source(path, chosen, chosen_name, program, program.locations.get(chosen_name))
    if name is None:
        raise KCompileError(f"name the model in {path}: {path}:NAME or --model NAME")
    return Source(path, _python_model(path, name), name)


def _python_model(path: str, attr: str) -> Model:
    try:
        namespace = runpy.run_path(path, run_name="__kcompile__")
    except KCompileError:
        raise
    except SyntaxError as err:
        raise KCompileError(f"syntax error: {err.msg}", SourceLoc(path, err.lineno or 1, err.offset or 0)) from None
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


def sources(source: str, model: str | None = None) -> list[Source]:
    """Every model a `.k` SOURCE defines (when no model is named), else the one named."""
    path, name = split_source(source, model)
    if name is None and path.endswith(".k"):
        program = load_program(path)
        return [Source(path, program.models[n], n, program, program.locations.get(n)) for n in program.own]
    return [resolve(source, model)]


def check(source: str, model: str | None = None, **compile_options: Any) -> list[Source]:
    """Build every model of SOURCE (or the one named), verify its IR and lower it to ONNX
    (`compile_options` go to `kc.compile`: learning_phase, level, passes, opset, ...).

    Returns the models checked; raises a located KCompileError on the first problem. Errors that
    only show after loading (IR verification, lowering) point at the model's definition.
    """
    from .api import compile as compile_model

    targets = sources(source, model)
    for src in targets:
        try:
            compile_model(src.model, **compile_options)
        except KCompileError as err:
            raise src.locate(err) from None
    return targets


def load(path: str, model: str | None = None) -> Model:
    """Load a model from a `.k` file (its only model, or the one named `model`), a Keras 3 `.keras`
    archive (structure and weights; no code from the file is run) or a `.py` file."""
    return resolve(path, model).model


__all__ = ["Source", "check", "load", "load_program", "resolve", "sources", "split_source"]
