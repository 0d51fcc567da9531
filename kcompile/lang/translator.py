"""`.k` AST -> `kc.Model`s, by interpreting the program on the Python layer API.

A `model` block runs like the body of a Python script building a functional model: `Input(...)`
makes a model input, `Dense(...)` makes a layer (the very class `kcompile.layers` exports), calling
a layer on tensors records the call, and `return` names the outputs; the block then becomes
`kc.Model(inputs, outputs, name=...)`, its inputs being the `Input`s it made, in order. A
`sequential` block becomes `kc.Sequential([...], name=...)`. So a `.k` model and the same model
written in Python produce the same IR: the same layer names, scopes, weights and nodes.

- `with device("gpu:0") {...}` / `with scope("x") {...}` -> `kc.device(...)` / `kc.name_scope(...)`;
- a `def` body runs afresh at each call, so each call makes new layers (no weight sharing);
- a layer or model value called several times shares its weights (one object, as in Keras);
- `m.trainable = False` freezes a layer or a whole model, as `model.trainable = False` in Keras;
- `import "f.k"` runs f.k once per load (relative to the importing file) and brings its models
  and defs into scope; import cycles are reported;
- layer calls run under `source_location(...)`, so IR nodes and layer errors carry `.k` positions.

Every error is a KCompileError located in a `.k` file. Errors the layer API raises without a
`.k` location get the location of the call that caused them (of the argument they name, when
they name one). Nothing in a model file runs as Python: the translator walks the AST itself.
"""

from __future__ import annotations

import linecache
import operator
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import KCompileError, ModelError, ShapeError, SourceLoc
from ..layers.base import InputLayer, KTensor, Layer, device, name_scope, source_location
from ..model import Model, Sequential
from . import ast
from .builtins import (
    BUILTINS,
    LAYER_NAMES,
    Builtin,
    ContextSpec,
    Signature,
    describe_type,
    describe_value,
    did_you_mean,
    matches,
    parse_annotation,
    signature,
)
from .parser import KSyntaxError, parse
from .training import TrainSpec, train_spec

_ARITHMETIC: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
_VERBS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}
_DUPLICATE_LAYER = re.compile(r'the name "([^"]+)" is used by two layers')


@dataclass
class Binding:
    """A top-level name: a model or a def, with where it was defined."""

    value: Any
    loc: SourceLoc
    kind: str  # "model" | "def"


@dataclass
class FileScope:
    """One loaded `.k` file: its top-level names (its own and imported ones) and train specs."""

    path: str
    names: dict[str, Binding] = field(default_factory=dict)
    own_models: list[str] = field(default_factory=list)
    training: dict[str, TrainSpec] = field(default_factory=dict)
    later: dict[str, SourceLoc] = field(default_factory=dict)  # names defined further down


@dataclass
class DefValue:
    """A `def` block, bound to the file it was defined in."""

    node: ast.FuncDef
    scope: FileScope
    defaults: dict[str, Any]

    def describe(self) -> str:
        return f"def '{self.node.name}'"


@dataclass
class ModelBuild:
    """What a model block has made so far: its Inputs, and every layer with where it was made."""

    name: str
    inputs: list[KTensor] = field(default_factory=list)
    made: list[tuple[Layer, SourceLoc]] = field(default_factory=list)


@dataclass
class Frame:
    """Evaluation state of one block: local names, the file's scope, the model being built."""

    scope: FileScope
    env: dict[str, Any]
    build: ModelBuild
    defs: tuple[str, ...] = ()

    def loc(self, node: ast.Node) -> SourceLoc:
        return SourceLoc(self.scope.path, node.line, node.col)


@dataclass
class Returned:
    value: Any
    node: ast.Return


def register_source(path: str, text: str) -> None:
    """Make `text` the lines diagnostics quote for `path` (also for sources without a file)."""
    linecache.cache[path] = (len(text), None, text.splitlines(keepends=True), path)


class Translator:
    """One load: files run once each (imports are shared), models built in definition order."""

    def __init__(self) -> None:
        self.files: dict[str, FileScope] = {}
        self.loading: list[tuple[str, str]] = []  # (real path, display path) of files being run
        self.sources: set[str] = set()
        # The first call of each layer applied in .k (it built the layer's weights): layer, where, inputs.
        self.first_calls: dict[int, tuple[Layer, SourceLoc, list[KTensor]]] = {}

    # Files ---------------------------------------------------------------------------------
    def load_file(self, path: str, via: SourceLoc | None = None) -> FileScope:
        key = os.path.realpath(path)
        if key in self.files:
            return self.files[key]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ModelError(f"cannot read {path}: {err.strerror}", via) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise KSyntaxError(f"{path} is not UTF-8 text (byte {err.start})", SourceLoc(path, line, 1)) from None
        return self.load_text(text, path, key)

    def load_text(self, text: str, path: str, key: str | None = None) -> FileScope:
        text = text.removeprefix("\ufeff")
        register_source(path, text)
        self.sources.add(path)
        module = parse(text, path)
        scope = FileScope(path)
        for item in module.items:
            if isinstance(item, ast.ModelDef | ast.FuncDef):
                scope.later.setdefault(item.name, SourceLoc(path, item.line, item.col))
        self.loading.append((key or os.path.realpath(path), path))
        try:
            self._run(module, scope)
        finally:
            self.loading.pop()
        self.files[key or os.path.realpath(path)] = scope
        return scope

    def _run(self, module: ast.Module, scope: FileScope) -> None:
        for item in module.items:
            if isinstance(item, ast.Import):
                self._import(item, scope)
            elif isinstance(item, ast.ModelDef):
                self._check_new_name(item.name, item, scope, "a model")
                model = self._sequential(item, scope) if item.sequential else self._model(item, scope)
                scope.names[item.name] = Binding(model, SourceLoc(scope.path, item.line, item.col), "model")
                scope.own_models.append(item.name)
            elif isinstance(item, ast.FuncDef):
                self._check_new_name(item.name, item, scope, "a def")
                scope.names[item.name] = Binding(
                    self._def(item, scope), SourceLoc(scope.path, item.line, item.col), "def"
                )
            elif isinstance(item, ast.TrainDef):
                self._train(item, scope)
            if isinstance(item, ast.ModelDef | ast.FuncDef):
                scope.later.pop(item.name, None)

    def _check_new_name(self, name: str, node: ast.Node, scope: FileScope, what: str) -> None:
        loc = SourceLoc(scope.path, node.line, node.col)
        if name in BUILTINS:
            raise ModelError(f"'{name}' is {BUILTINS[name].describe()}; give {what} another name", loc)
        if name in scope.names:
            raise ModelError(f"'{name}' is already defined, at {scope.names[name].loc}", loc)

    def _import(self, item: ast.Import, scope: FileScope) -> None:
        loc = SourceLoc(scope.path, item.line, item.col)
        path = item.path
        if not os.path.isabs(path):
            path = os.path.normpath(os.path.join(os.path.dirname(scope.path), path))
        if not path.endswith(".k"):
            raise ModelError(f'cannot import "{item.path}": only .k files can be imported', loc)
        key = os.path.realpath(path)
        chain = [k for k, _ in self.loading]
        if key in chain:
            cycle = [display for _, display in self.loading[chain.index(key) :]] + [path]
            raise ModelError("import cycle: " + " imports ".join(cycle), loc)
        if not os.path.isfile(path):
            folder = os.path.dirname(path) or "."
            siblings = [f for f in os.listdir(folder) if f.endswith(".k")] if os.path.isdir(folder) else []
            hint = did_you_mean(os.path.basename(path), siblings)
            raise ModelError(f'cannot import "{item.path}": there is no file {path}{hint}', loc)
        try:
            imported = self.load_file(path, loc)
        except KCompileError as err:
            if err.loc is not None and err.loc != loc:
                err.message += f" (imported from {loc})"
            raise
        for name, binding in imported.names.items():
            mine = scope.names.get(name)
            if mine is not None and mine.value is not binding.value:
                raise ModelError(
                    f"importing \"{item.path}\" brings '{name}' (defined at {binding.loc}), "
                    f"but '{name}' is already defined, at {mine.loc}",
                    loc,
                )
            scope.names[name] = binding
        for name, spec in imported.training.items():
            scope.training.setdefault(name, spec)

    def _def(self, item: ast.FuncDef, scope: FileScope) -> DefValue:
        frame = Frame(scope, {}, ModelBuild(""))
        defaults = {p.name: self._eval(p.default, frame) for p in item.params if p.default is not None}
        return DefValue(item, scope, defaults)

    def _train(self, item: ast.TrainDef, scope: FileScope) -> None:
        loc = SourceLoc(scope.path, item.line, item.col)
        binding = scope.names.get(item.name)
        if binding is None or binding.kind != "model":
            models = [n for n, b in scope.names.items() if b.kind == "model"]
            what = f"'{item.name}' is a def, not a model" if binding else f"there is no model '{item.name}'"
            if item.name in scope.later:
                what += f" yet (it is defined at {scope.later[item.name]}; put the train block after it)"
            raise ModelError(f"train block: {what}{did_you_mean(item.name, models)}", loc)
        if item.name in scope.training:
            raise ModelError(f"model '{item.name}' already has a train block, at {scope.training[item.name].loc}", loc)
        scope.training[item.name] = train_spec(item, scope.path, len(binding.value.outputs))

    # Models --------------------------------------------------------------------------------
    def _model(self, item: ast.ModelDef, scope: FileScope) -> Model:
        loc = SourceLoc(scope.path, item.line, item.col)
        frame = Frame(scope, {}, ModelBuild(item.name))
        result = self._block(item.body.body, frame)
        if result is None:
            raise ModelError(f"model '{item.name}' returns nothing; end it with 'return' and its output(s)", loc)
        ret_loc = frame.loc(result.node.value)
        values = list(result.value) if isinstance(result.value, tuple | list) else [result.value]
        items = result.node.value.items if isinstance(result.node.value, ast.TupleExpr | ast.ListExpr) else ()
        if not values:
            raise ModelError(f"model '{item.name}' must return at least one tensor", ret_loc)
        for i, v in enumerate(values):
            if not isinstance(v, KTensor):
                where = frame.loc(items[i]) if i < len(items) else ret_loc
                hint = "; call it on a tensor: layer(x)" if isinstance(v, Layer) else ""
                raise ModelError(f"model '{item.name}' must return tensors, got {describe_value(v)}{hint}", where)
        if not frame.build.inputs:
            raise ModelError(f"model '{item.name}' makes no Input; start it with e.g. x = Input(shape=(784,))", loc)
        inputs: Any = frame.build.inputs[0] if len(frame.build.inputs) == 1 else list(frame.build.inputs)
        outputs: Any = values if isinstance(result.value, tuple | list) else values[0]
        try:
            with source_location(ret_loc):
                model = Model(inputs, outputs, name=item.name)
        except KCompileError as err:
            raise self._duplicate_layer(err, frame.build) or self._relocate(err, ret_loc) from None
        self._check_weight_names(model, frame.build, ret_loc)
        return model

    def _sequential(self, item: ast.ModelDef, scope: FileScope) -> Sequential:
        loc = SourceLoc(scope.path, item.line, item.col)
        frame = Frame(scope, {}, ModelBuild(item.name))
        entries: list[tuple[Any, ast.Stmt]] = []
        for stmt in item.body.body:
            if not isinstance(stmt, ast.ExprStmt):
                raise ModelError(
                    "a sequential block lists layers, one per line (an Input first); "
                    "assignments, 'with' and 'return' belong in a model block",
                    frame.loc(stmt),
                )
            value = self._eval(stmt.expr, frame)
            if isinstance(value, KTensor):
                if entries:
                    raise ModelError(
                        f"an Input may only come first in a sequential block, got {describe_value(value)}",
                        frame.loc(stmt),
                    )
            elif not isinstance(value, Layer):
                raise ModelError(f"a sequential block takes layers, got {describe_value(value)}", frame.loc(stmt))
            entries.append((value, stmt))
        if not entries:
            raise ModelError(f"sequential '{item.name}' is empty; list its layers, one per line", loc)
        try:
            with source_location(loc):
                return Sequential([v for v, _ in entries], name=item.name)
        except KCompileError as err:
            dup = self._duplicate_layer(err, frame.build)
            if dup is not None:
                raise dup from None
            if err.loc is None or err.loc == loc:
                # Sequential calls its layers in one go: blame the layer the message names first.
                named = [
                    (err.message.index(f"'{v.name}'"), stmt)
                    for v, stmt in entries
                    if isinstance(v, Layer) and f"'{v.name}'" in err.message
                ]
                if named:
                    err.loc = frame.loc(min(named, key=lambda x: x[0])[1])
                    raise
            raise self._relocate(err, loc) from None

    def _duplicate_layer(self, err: KCompileError, build: ModelBuild) -> KCompileError | None:
        found = _DUPLICATE_LAYER.search(err.message)
        if found is None:
            return None
        name = found.group(1)
        same = [loc for layer, loc in build.made if layer.name == name]
        if not same:
            return None
        other = f" (the other is made at line {same[0].line})" if len(same) > 1 else ""
        return ModelError(
            f"two layers of model '{build.name}' are named '{name}'{other}; layer names, and the weight names "
            f"made from them ('{name}/kernel', ...), must be unique in a model",
            same[-1],
        )

    def _check_weight_names(self, model: Model, build: ModelBuild, fallback: SourceLoc) -> None:
        """Two distinct weights with one name would collide in ONNX files and checkpoints."""
        owners: dict[str, list[tuple[Any, Layer]]] = {}

        def walk(m: Model) -> None:
            for layer in m.layers:
                if isinstance(layer, Model):
                    walk(layer)
                    continue
                for w in layer.weights:
                    entries = owners.setdefault(w.name, [])
                    if all(w is not other for other, _ in entries):
                        entries.append((w, layer))

        walk(model)
        made = {id(layer): loc for layer, loc in build.made}
        for name, entries in owners.items():
            if len(entries) < 2:
                continue
            (_, first), (_, second) = entries[0], entries[-1]
            loc = made.get(id(second)) or made.get(id(first)) or fallback
            raise ModelError(
                f"two weights of model '{model.name}' are named '{name}' (of layers '{first.name}' and "
                f"'{second.name}'); weight names must be unique: rename a layer (name=...) or wrap it in a scope",
                loc,
            )

    # Statements ----------------------------------------------------------------------------
    def _block(self, stmts: tuple[ast.Stmt, ...], frame: Frame) -> Returned | None:
        for stmt in stmts:
            if isinstance(stmt, ast.Return):
                return Returned(self._eval(stmt.value, frame), stmt)
            if isinstance(stmt, ast.With):
                result = self._with(stmt, frame)
                if result is not None:
                    return result
            elif isinstance(stmt, ast.Assign):
                self._assign(stmt, frame)
            else:
                self._eval(stmt.expr, frame)
        return None

    def _with(self, stmt: ast.With, frame: Frame) -> Returned | None:
        with ExitStack() as stack:
            for node in stmt.contexts:
                spec = self._eval(node, frame)
                if not isinstance(spec, ContextSpec):
                    raise ModelError(
                        f'with takes device("gpu:0") or scope("name"), got {describe_value(spec)}', frame.loc(node)
                    )
                where = frame.loc(node.args[0]) if isinstance(node, ast.Call) and node.args else frame.loc(node)
                with self._guard(where, "with"):
                    stack.enter_context(device(spec.arg) if spec.kind == "device" else name_scope(spec.arg))
            return self._block(stmt.body.body, frame)

    def _assign(self, stmt: ast.Assign, frame: Frame) -> None:
        value = self._eval(stmt.value, frame)
        if not stmt.unpack:
            self._bind(stmt.targets[0], value, stmt.value, frame)
            return
        n = len(stmt.targets)
        if not isinstance(value, tuple | list):
            raise ModelError(f"cannot unpack {describe_value(value)} into {n} names", frame.loc(stmt.value))
        if len(value) != n:
            names = ", ".join(t.id if isinstance(t, ast.Name) else t.attr for t in stmt.targets)
            raise ModelError(
                f"this gives {len(value)} value{'s' if len(value) != 1 else ''}, "
                f"but {n} names ({names}) are waiting for them",
                frame.loc(stmt.value),
            )
        for target, v in zip(stmt.targets, value, strict=True):
            self._bind(target, v, stmt.value, frame)

    def _bind(self, target: ast.Name | ast.Attribute, value: Any, node: ast.Expr, frame: Frame) -> None:
        if isinstance(target, ast.Name):
            if target.id in BUILTINS:
                raise ModelError(
                    f"cannot assign to '{target.id}': it names {BUILTINS[target.id].describe()}", frame.loc(target)
                )
            frame.env[target.id] = value
            return
        obj = self._eval(target.value, frame)
        if target.attr != "trainable":
            raise ModelError(
                f"only '.trainable' can be set (on a layer or a model), not '.{target.attr}'", frame.loc(target)
            )
        if not isinstance(obj, Layer):
            raise ModelError(f"{describe_value(obj)} has no 'trainable'; layers and models do", frame.loc(target))
        if not isinstance(value, bool):
            raise ModelError(f"trainable takes True or False, got {describe_value(value)}", frame.loc(node))
        obj.trainable = value

    # Expressions ---------------------------------------------------------------------------
    def _eval(self, e: ast.Expr, frame: Frame) -> Any:
        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, ast.Name):
            return self._lookup(e, frame)
        if isinstance(e, ast.Call):
            return self._call(e, frame)
        if isinstance(e, ast.TupleExpr):
            return tuple(self._eval(x, frame) for x in e.items)
        if isinstance(e, ast.ListExpr):
            return [self._eval(x, frame) for x in e.items]
        if isinstance(e, ast.BinOp):
            return self._binop(e, frame)
        if isinstance(e, ast.UnaryOp):
            return self._unary(e, frame)
        if isinstance(e, ast.Attribute):
            return self._attribute(e, frame)
        if isinstance(e, ast.Index):
            return self._index(e, frame)
        raise ModelError(f"cannot evaluate {type(e).__name__}", frame.loc(e))

    def _lookup(self, e: ast.Name, frame: Frame, callee: bool = False) -> Any:
        if e.id in frame.env:
            return frame.env[e.id]
        binding = frame.scope.names.get(e.id)
        if binding is not None:
            return binding.value
        if e.id in BUILTINS:
            return BUILTINS[e.id]
        loc = frame.loc(e)
        if e.id == frame.build.name:
            raise ModelError(f"'{e.id}' is the model being defined; a model cannot use itself", loc)
        if e.id in frame.scope.later:
            raise ModelError(
                f"'{e.id}' is defined further down, at {frame.scope.later[e.id]}; define it before using it", loc
            )
        if callee and e.id[:1].isupper():
            choices = LAYER_NAMES + [n for n, b in frame.scope.names.items()]
            near = did_you_mean(e.id, choices, n=3)
            if not near:
                lowered = {n.lower(): n for n in choices}
                near = f"; did you mean '{lowered[e.id.lower()]}'?" if e.id.lower() in lowered else ""
            known = near or f"; the layers are: {', '.join(n for n in LAYER_NAMES if n[:1].isupper())}"
            raise ModelError(f"unknown layer '{e.id}'{known}", loc)
        choices = [*frame.env, *frame.scope.names, *BUILTINS]
        raise ModelError(f"undefined name '{e.id}'{did_you_mean(e.id, choices)}", loc)

    def _call(self, e: ast.Call, frame: Frame) -> Any:
        func = self._lookup(e.func, frame, callee=True) if isinstance(e.func, ast.Name) else self._eval(e.func, frame)
        args = [self._eval(a, frame) for a in e.args]
        kwargs = [(k, self._eval(k.value, frame)) for k in e.kwargs]
        if isinstance(func, Builtin):
            return self._builtin(func, args, kwargs, e, frame)
        if isinstance(func, DefValue):
            return self._call_def(func, args, kwargs, e, frame)
        if isinstance(func, Layer):
            return self._apply(func, args, kwargs, e, frame)
        raise ModelError(f"{describe_value(func)} cannot be called", frame.loc(e))

    def _bind_args(
        self, sig: Signature, args: list[Any], kwargs: list[tuple[ast.Keyword, Any]], e: ast.Call, frame: Frame
    ) -> dict[str, tuple[Any, ast.Expr]]:
        if len(args) > len(sig.positional):
            n = len(sig.positional)
            takes = f"{n} positional argument{'s' if n != 1 else ''} ({', '.join(a.name for a in sig.positional)})"
            raise ModelError(
                f"{sig.name} takes {takes if n else 'no positional arguments'}; pass the others by name: {sig.text()}",
                frame.loc(e.args[n]),
            )
        bound = {a.name: (v, node) for a, v, node in zip(sig.positional, args, e.args, strict=False)}
        for k, v in kwargs:
            if k.name not in sig.args:
                raise ModelError(
                    f"{sig.name} has no argument '{k.name}'{did_you_mean(k.name, sig.args, inline=True)}; "
                    f"its arguments are: {sig.names()}",
                    frame.loc(k),
                )
            if k.name in bound:
                raise ModelError(f"{sig.name} got argument '{k.name}' twice (by position and by name)", frame.loc(k))
            bound[k.name] = (v, k.value)
        missing = [a.name for a in sig.args.values() if a.required and a.name not in bound]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise ModelError(
                f"{sig.name} is missing argument{plural} {', '.join(repr(m) for m in missing)}; it takes {sig.text()}",
                frame.loc(e),
            )
        for name, (value, node) in bound.items():
            spec = parse_annotation(sig.args[name].annotation)
            if not matches(spec, value):
                raise ModelError(
                    f"{sig.name} argument '{name}' must be {describe_type(spec)}, got {describe_value(value)}",
                    frame.loc(node),
                )
        return bound

    def _builtin(
        self, b: Builtin, args: list[Any], kwargs: list[tuple[ast.Keyword, Any]], e: ast.Call, frame: Frame
    ) -> Any:
        bound = self._bind_args(signature(b), args, kwargs, e, frame)
        values = {name: v for name, (v, _) in bound.items()}
        if b.kind == "context":
            (arg,) = values.values()
            return ContextSpec(b.name, arg)
        loc = frame.loc(e)
        arg_locs = {name: frame.loc(node) for name, (_, node) in bound.items()}
        with self._guard(loc, b.name, arg_locs), source_location(loc):
            # Input(...) is InputLayer(...).output; making the layer here lets us record it.
            result = InputLayer(**values) if b.kind == "input" else b.target(**values)
        if isinstance(result, Layer):
            frame.build.made.append((result, loc))
        if b.kind == "input":
            frame.build.inputs.append(result.output)
            return result.output
        return result

    def _apply(
        self, layer: Layer, args: list[Any], kwargs: list[tuple[ast.Keyword, Any]], e: ast.Call, frame: Frame
    ) -> Any:
        what = describe_value(layer)
        if kwargs:
            raise ModelError(
                f"calling {what} takes only its input tensor(s); options go where the layer is made",
                frame.loc(kwargs[0][0]),
            )
        if not args:
            raise ModelError(f"{what} must be called on a tensor, e.g. {layer.name}(x)", frame.loc(e))
        if len(args) > 1 and not layer.takes_list:
            raise ModelError(f"{what} takes one tensor, got {len(args)} arguments", frame.loc(e.args[1]))
        for value, node in zip(args, e.args, strict=True):
            items = value if isinstance(value, list | tuple) else [value]
            for v in items:
                if not isinstance(v, KTensor):
                    raise ModelError(
                        f"{what} must be called on tensors (from Input or a layer), got {describe_value(v)}",
                        frame.loc(node),
                    )
        inputs = args[0] if len(args) == 1 else list(args)
        loc = frame.loc(e)
        try:
            with self._guard(loc, layer.name), source_location(loc):
                out = layer(inputs)
        except ShapeError as err:
            err.message += self._expectation(layer)
            raise
        self.first_calls.setdefault(
            id(layer), (layer, loc, [t for a in args for t in (a if isinstance(a, list | tuple) else [a])])
        )
        return out

    def _expectation(self, layer: Layer) -> str:
        """Where what a layer expects comes from: a model's Inputs, a shared layer's first call."""
        if isinstance(layer, Model):
            takes = "; ".join(f"{t.type} from {t.origin()}" for t in layer.inputs)
            return f"; model '{layer.name}' takes {takes}" if takes else ""
        first = self.first_calls.get(id(layer))
        if first is None:
            return ""
        _, loc, tensors = first
        seen = "; ".join(f"{t.type} from {t.origin()}" for t in tensors)
        return f"; layer '{layer.name}' was built by its first call, at {loc}, on {seen}"

    def _call_def(
        self, d: DefValue, args: list[Any], kwargs: list[tuple[ast.Keyword, Any]], e: ast.Call, frame: Frame
    ) -> Any:
        name, params = d.node.name, d.node.params
        loc = frame.loc(e)
        if name in frame.defs:
            raise ModelError(f"def '{name}' calls itself; .k has no recursion", loc)
        usage = f"{name}({', '.join(p.name for p in params)})"
        if len(args) > len(params):
            raise ModelError(
                f"def {usage} takes {len(params)} arguments, got {len(args)}", frame.loc(e.args[len(params)])
            )
        env: dict[str, Any] = {p.name: v for p, v in zip(params, args, strict=False)}
        names = {p.name for p in params}
        for k, v in kwargs:
            if k.name not in names:
                raise ModelError(f"def {usage} has no parameter '{k.name}'{did_you_mean(k.name, names)}", frame.loc(k))
            if k.name in env:
                raise ModelError(f"def {usage} got '{k.name}' twice (by position and by name)", frame.loc(k))
            env[k.name] = v
        for p in params:
            if p.name not in env:
                if p.name not in d.defaults:
                    raise ModelError(f"def {usage} is missing argument '{p.name}'", loc)
                env[p.name] = d.defaults[p.name]
        inner = Frame(d.scope, env, frame.build, (*frame.defs, name))
        try:
            result = self._block(d.node.body.body, inner)
        except KCompileError as err:
            if err.loc is not None and err.loc != loc:
                err.message += f" (in def '{name}', called at {loc})"
            raise
        return None if result is None else result.value

    def _binop(self, e: ast.BinOp, frame: Frame) -> Any:
        a, b = self._eval(e.left, frame), self._eval(e.right, frame)
        loc = frame.loc(e)
        ok = (KTensor, int, float)
        if not isinstance(a, ok) or not isinstance(b, ok) or isinstance(a, bool) or isinstance(b, bool):
            raise ModelError(
                f"cannot {_VERBS[e.op]} {describe_value(a)} and {describe_value(b)}; "
                "arithmetic works on tensors and numbers",
                loc,
            )
        if not isinstance(a, KTensor) and not isinstance(b, KTensor):
            if e.op == "/" and b == 0:
                raise ModelError("division by zero", loc)
            return _ARITHMETIC[e.op](a, b)
        with self._guard(loc, f"'{e.op}'"), source_location(loc):
            return _ARITHMETIC[e.op](a, b)

    def _unary(self, e: ast.UnaryOp, frame: Frame) -> Any:
        v = self._eval(e.operand, frame)
        if isinstance(v, bool) or not isinstance(v, KTensor | int | float):
            raise ModelError(f"cannot apply '{e.op}' to {describe_value(v)}", frame.loc(e))
        if e.op == "+":
            return v
        loc = frame.loc(e)
        with self._guard(loc, "'-'"), source_location(loc):
            return -v

    def _attribute(self, e: ast.Attribute, frame: Frame) -> Any:
        obj = self._eval(e.value, frame)
        readable: dict[str, Any] = {}
        if isinstance(obj, KTensor):
            readable = {"shape": lambda: obj.shape, "dtype": lambda: obj.dtype}
        elif isinstance(obj, Layer):
            readable = {"name": lambda: obj.name, "trainable": lambda: obj.trainable}
        if e.attr not in readable:
            known = f"; it has: {', '.join(readable)}" if readable else ""
            raise ModelError(f"{describe_value(obj)} has no attribute '{e.attr}'{known}", frame.loc(e))
        return readable[e.attr]()

    def _index(self, e: ast.Index, frame: Frame) -> Any:
        obj, i = self._eval(e.value, frame), self._eval(e.index, frame)
        if not isinstance(obj, tuple | list):
            raise ModelError(f"{describe_value(obj)} cannot be indexed; tuples and lists can", frame.loc(e))
        if isinstance(i, bool) or not isinstance(i, int):
            raise ModelError(f"an index must be an int, got {describe_value(i)}", frame.loc(e.index))
        if not -len(obj) <= i < len(obj):
            raise ModelError(f"index {i} is out of range for {describe_value(obj)}", frame.loc(e.index))
        return obj[i]

    # Errors from the layer API -------------------------------------------------------------
    def _is_k(self, loc: SourceLoc | None) -> bool:
        return loc is not None and loc.file in self.sources

    def _relocate(self, err: KCompileError, loc: SourceLoc) -> KCompileError:
        if not self._is_k(err.loc):
            err.loc = loc
        return err

    @contextmanager
    def _guard(self, loc: SourceLoc, what: str, arg_locs: dict[str, SourceLoc] | None = None) -> Iterator[None]:
        """Give errors from the layer API a `.k` location: the argument they name, else `loc`."""
        try:
            yield
        except KCompileError as err:
            if not self._is_k(err.loc):
                named = [n for n in (arg_locs or {}) if re.search(rf"\b{re.escape(n)}\b", err.message)]
                err.loc = (arg_locs or {})[named[0]] if named else loc
            raise
        except RecursionError:
            raise ModelError("the model is nested too deeply", loc) from None
        except Exception as err:
            raise ModelError(f"internal error in {what}: {type(err).__name__}: {err} (please report it)", loc) from err
