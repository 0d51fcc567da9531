"""The names a `.k` program may use without defining them, and how a call of one is checked.

Builtins are every public layer class and layer function of `kcompile.layers` (its `__all__`,
less the abstract `Layer` and `KTensor`), `Input`, and the context builders `device(...)` and
`scope(...)`. A call `Dense(128, activation="relu")` is checked against the Python signature of
`Dense.__init__` (following `**kwargs` into the base classes, so `name=` and `trainable=` are
known) before the layer is made: unknown and missing arguments and argument types that do not
match the annotation are reported with the valid choices. The annotation strings are read by a
small parser here, never evaluated.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

from .. import layers
from ..layers.base import Input, KTensor, Layer

# Arguments that Layer.__init__ takes through **kwargs (Keras' input_shape=/batch_size=).
_LAYER_EXTRAS = {"input_shape": "Sequence[int | None]", "batch_size": "int | None", "input_dim": "int"}
_NOT_BUILTIN = {"Layer", "KTensor"}


@dataclass(frozen=True)
class ContextSpec:
    """The value of `device("gpu:0")` or `scope("name")`: usable only in a `with` statement."""

    kind: str
    arg: str


@dataclass(frozen=True)
class Builtin:
    """A callable builtin: a layer class, a layer function (`concatenate`), Input, device, scope."""

    name: str
    target: Any
    kind: str  # "layer" | "function" | "input" | "context"

    def describe(self) -> str:
        if self.kind == "layer":
            return f"the layer {self.name}"
        if self.kind == "context":
            return f"{self.name}(...)"
        return f"the function {self.name}"


def _builtins() -> dict[str, Builtin]:
    table: dict[str, Builtin] = {}
    for name in layers.__all__:
        if name in _NOT_BUILTIN:
            continue
        target = getattr(layers, name)
        if name == "Input":
            table[name] = Builtin(name, Input, "input")
        elif inspect.isclass(target) and issubclass(target, Layer):
            table[name] = Builtin(name, target, "layer")
        elif callable(target):
            table[name] = Builtin(name, target, "function")
    table["Input"] = Builtin("Input", Input, "input")
    table["device"] = Builtin("device", "device", "context")
    table["scope"] = Builtin("scope", "scope", "context")
    return table


BUILTINS: dict[str, Builtin] = _builtins()
LAYER_NAMES: list[str] = sorted(n for n, b in BUILTINS.items() if b.kind in ("layer", "function", "input"))


def did_you_mean(word: str, choices: Any, n: int = 1, inline: bool = False) -> str:
    """`; did you mean 'x'?` (or ` (did you mean 'x'?)` inside a sentence), or '' if nothing is close."""
    near = difflib.get_close_matches(word, sorted(set(choices)), n=n, cutoff=0.6)
    if not near:
        return ""
    text = "did you mean " + " or ".join(f"'{x}'" for x in near) + "?"
    return f" ({text})" if inline else f"; {text}"


# Signatures --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arg:
    name: str
    annotation: str | None
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def text(self) -> str:
        return self.name if self.required else f"{self.name}={_default_text(self.default)}"


def _default_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class Signature:
    """What a builtin accepts: `positional` in order, every one of `args` by name."""

    name: str
    positional: tuple[Arg, ...]
    args: dict[str, Arg]

    def text(self) -> str:
        names = [a.text() for a in self.positional] + [
            a.text() for n, a in self.args.items() if a not in self.positional
        ]
        return f"{self.name}({', '.join(names)})"

    def names(self) -> str:
        return ", ".join(self.args)


def _params(fn: Any) -> tuple[list[inspect.Parameter], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return [], True
    params = [p for p in sig.parameters.values() if p.name != "self"]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return [p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)], var_kw


def _arg(p: inspect.Parameter) -> Arg:
    ann = p.annotation if isinstance(p.annotation, str) else None
    return Arg(p.name, ann, p.default)


@cache
def signature(builtin: Builtin) -> Signature:
    """The arguments of a builtin, following **kwargs down the layer class hierarchy."""
    target = builtin.target
    if builtin.kind == "context":
        arg = Arg("device" if builtin.name == "device" else "name", "str")
        return Signature(builtin.name, (arg,), {arg.name: arg})
    if builtin.kind == "input":
        params, _ = _params(Input)
        pos = tuple(_arg(p) for p in params)
        return Signature("Input", pos, {a.name: a for a in pos})
    chain: list[Any] = []
    if builtin.kind == "layer":
        chain = [k.__init__ for k in target.__mro__ if "__init__" in vars(k) and issubclass(k, Layer)]
    else:
        chain = [target]
        # A layer function forwards **kwargs to its layer class: concatenate -> Concatenate.
        cls = getattr(layers, builtin.name[:1].upper() + builtin.name[1:], None)
        if inspect.isclass(cls) and issubclass(cls, Layer):
            chain += [k.__init__ for k in cls.__mro__ if "__init__" in vars(k) and issubclass(k, Layer)]
    positional: list[Arg] = []
    args: dict[str, Arg] = {}
    for i, fn in enumerate(chain):
        params, var_kw = _params(fn)
        for p in params:
            if p.kind is p.KEYWORD_ONLY or p.name in args:
                args.setdefault(p.name, _arg(p))
                continue
            a = _arg(p)
            if i == 0:
                positional.append(a)
            args[p.name] = a
        if fn is Layer.__init__:
            for name, ann in _LAYER_EXTRAS.items():
                args.setdefault(name, Arg(name, ann, None))
        if not var_kw:
            break
    return Signature(builtin.name, tuple(positional), args)


# Annotation strings -> checks --------------------------------------------------------------
@dataclass(frozen=True)
class TypeSpec:
    kind: str  # any | none | int | float | bool | str | tensor | seq | union
    items: tuple[TypeSpec, ...] = ()


_ANY = TypeSpec("any")
_BASES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "None": "none",
    "KTensor": "tensor",
}
_SEQUENCES = {"Sequence", "list", "tuple", "List", "Tuple"}


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def parse_annotation(text: str | None) -> TypeSpec:
    """`"int | Sequence[int]"` -> TypeSpec; anything not understood accepts every value."""
    if not text:
        return _ANY
    alts = _split_top(text, "|")
    if len(alts) > 1:
        specs = tuple(parse_annotation(a) for a in alts)
        return _ANY if any(s.kind == "any" for s in specs) else TypeSpec("union", specs)
    part = alts[0]
    if "[" in part and part.endswith("]"):
        base, inner = part.split("[", 1)
        if base.strip().split(".")[-1] not in _SEQUENCES:
            return _ANY
        elems = [e for e in _split_top(inner[:-1], ",") if e != "..."]
        specs = tuple(parse_annotation(e) for e in elems)
        if not specs or any(s.kind == "any" for s in specs):
            return TypeSpec("seq", (_ANY,))
        return TypeSpec("seq", (specs[0] if len(specs) == 1 else TypeSpec("union", specs),))
    kind = _BASES.get(part.split(".")[-1])
    return TypeSpec(kind) if kind else _ANY


def matches(spec: TypeSpec, value: Any) -> bool:
    k = spec.kind
    if k == "any":
        return True
    if k == "none":
        return value is None
    if k == "bool":
        return isinstance(value, bool)
    if k == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if k == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if k == "str":
        return isinstance(value, str)
    if k == "tensor":
        return isinstance(value, KTensor)
    if k == "seq":
        return isinstance(value, list | tuple) and all(matches(spec.items[0], v) for v in value)
    if k == "union":
        return any(matches(s, value) for s in spec.items)
    return True


_WORDS = {
    "none": ("None", "None"),
    "bool": ("True or False", "bools"),
    "int": ("an int", "ints"),
    "float": ("a number", "numbers"),
    "str": ("a string", "strings"),
    "tensor": ("a tensor", "tensors"),
    "any": ("anything", "values"),
}


def describe_type(spec: TypeSpec, plural: bool = False) -> str:
    if spec.kind == "union":
        words = [describe_type(s, plural) for s in spec.items]
        return " or ".join(dict.fromkeys(words))
    if spec.kind == "seq":
        item = spec.items[0]
        inner = "/".join(describe_type(s, True) for s in (item.items if item.kind == "union" else (item,)))
        return f"tuples of {inner}" if plural else f"a tuple or list of {inner}"
    one, many = _WORDS.get(spec.kind, ("anything", "values"))
    return many if plural else one


def _literal(value: Any) -> str:
    """A value as .k source would write it (tensors and layers abbreviated)."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, KTensor):
        return f"<tensor {value.type}>"
    if isinstance(value, Layer):
        return f"<layer {value.name}>"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return f"<{type(value).__name__}>"


def describe_value(value: Any) -> str:
    """A value as a diagnostic names it: `the string "relu"`, `a tensor float32[batch, 784] (...)`."""
    from ..model import Model

    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, KTensor):
        return f"a tensor {value.type} (from {value.origin()})"
    if isinstance(value, Model):
        return f"model '{value.name}'"
    if isinstance(value, Layer):
        return f"layer '{value.name}' ({type(value).__name__})"
    if isinstance(value, tuple | list):
        kind = "tuple" if isinstance(value, tuple) else "list"
        text = _literal(value)
        return f"the {kind} {text}" if len(text) <= 48 else f"a {kind} of {len(value)}"
    if isinstance(value, Builtin):
        return value.describe()
    if isinstance(value, ContextSpec):
        return f'{value.kind}("{value.arg}")'
    describe = getattr(value, "describe", None)
    return describe() if callable(describe) else type(value).__name__
