"""The op registry: one entry per primitive op, holding everything the pipeline knows about it.

An entry (`OpDef`) carries
- `attrs`: the attribute schema (name, kind, default) that `check_attrs` enforces;
- `infer`: input types + attrs -> output types (raises ShapeError with a readable message);
- `reference`: the NumPy implementation; the reference interpreter and every test use it as the
  definition of the op's meaning;
- `onnx`: the lowering to ONNX nodes (through an `OnnxEmitter`);
- `relax`: the lowering to TVM Relax (filled by the TVM back end);
- `grad`: the reverse-mode gradient rule (filled by the autodiff pass);
- `elementwise`: the op acts position by position (so layout rewrites may move transposes
  across it);
- `fold_phase`, for ops that read the learning phase: what the op becomes when the phase is a
  known constant (`Dropout(x) -> x` when training is False).

Passes and back ends look ops up here; nobody grows a per-op `if` chain elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import GraphError
from ..ir.types import TensorType

REQUIRED = object()

# Attribute kinds and the Python values that satisfy them. Sequences are stored as tuples so that
# attrs compare, hash and round-trip through JSON exactly.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float | np.floating) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool | np.bool_),
    "str": lambda v: isinstance(v, str),
    "ints": lambda v: isinstance(v, tuple) and all(_KINDS["int"](x) for x in v),
    "floats": lambda v: isinstance(v, tuple) and all(_KINDS["float"](x) for x in v),
    "array": lambda v: isinstance(v, np.ndarray),
    "dtype": lambda v: isinstance(v, str),
}


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] = ()


class OnnxEmitter(Protocol):
    """What an op's ONNX lowering may do: add nodes and constants to the ONNX graph."""

    def blocked_conv(self, w_shape: tuple[int, ...]) -> bool:
        """Whether a Conv with a run-time filter of this shape (ungrouped) will run in the
        engine's blocked (NCHWc) kernels; only then is a Conv the fastest form of a
        convolution-shaped product."""
        ...

    def emit(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> list[str]: ...

    def const(self, array: np.ndarray, hint: str = "const") -> str: ...

    def graph_input(self, name: str, type: TensorType) -> str: ...


class RefContext(Protocol):
    """What a reference implementation may read besides its inputs."""

    training: bool

    def rng(self, seed: int) -> np.random.Generator: ...


Infer = Callable[[list[TensorType], dict[str, Any]], list[TensorType]]
Reference = Callable[[RefContext, list[np.ndarray], dict[str, Any]], list[np.ndarray]]
OnnxLowering = Callable[[OnnxEmitter, list[str], dict[str, Any], list[TensorType]], list[str]]


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]  # input names; a trailing '?' marks an optional input
    attrs: tuple[Attr, ...] = ()
    infer: Infer | None = None
    reference: Reference | None = None
    onnx: OnnxLowering | None = None
    relax: Callable[..., Any] | None = None
    grad: Callable[..., Any] | None = None
    fold_phase: Callable[..., Any] | None = None
    variadic: bool = False  # the last input repeats (concat)
    # Applies independently at each position (after broadcasting): commutes with transposes.
    elementwise: bool = False
    doc: str = ""
    num_outputs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def phase_dependent(self) -> bool:
        return self.fold_phase is not None

    def arity(self) -> tuple[int, int | None]:
        required = sum(1 for i in self.inputs if not i.endswith("?"))
        return required, None if self.variadic else len(self.inputs)

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults, normalise sequences to tuples, reject unknown or ill-typed attrs."""
        known = {a.name: a for a in self.attrs}
        for key in attrs:
            if key not in known:
                raise GraphError(f"op '{self.name}' has no attribute '{key}'")
        out: dict[str, Any] = {}
        for a in self.attrs:
            if a.name in attrs:
                value = attrs[a.name]
            elif a.default is REQUIRED:
                raise GraphError(f"op '{self.name}' needs attribute '{a.name}'")
            else:
                value = a.default
            if isinstance(value, list):
                value = tuple(value)
            if value is not None and not _KINDS[a.kind](value):
                raise GraphError(f"op '{self.name}': attribute '{a.name}' must be {a.kind}, got {value!r}")
            if a.choices and value not in a.choices:
                raise GraphError(f"op '{self.name}': attribute '{a.name}' must be one of {a.choices}, got {value!r}")
            out[a.name] = value
        return out

    def check_arity(self, n: int) -> None:
        lo, hi = self.arity()
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else ''}"
            raise GraphError(f"op '{self.name}' takes {want} inputs, got {n}")


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in OPS:
        raise GraphError(f"op '{op.name}' is registered twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise GraphError(f"unknown op '{name}'") from None


def infer_types(op: OpDef, types: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    assert op.infer is not None, f"op '{op.name}' has no shape rule"
    return op.infer(types, attrs)
