"""The `.k` abstract syntax tree: what `parser.py` turns a parse tree into, and what
`translator.py` interprets.

Every node carries the 1-based `line` and `col` of the token a diagnostic about it should point
at: a call at the start of its callee, a binary operation at its operator, a keyword argument at
its name, a model definition at the model's name. Nodes are immutable; nothing here executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class Node:
    line: int
    col: int


# Expressions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Name(Node):
    id: str


@dataclass(frozen=True, slots=True)
class Constant(Node):
    """A literal: int, float, string, True, False or None."""

    value: int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class TupleExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class ListExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Keyword(Node):
    """`name=value` in a call; the position is the name's."""

    name: str
    value: Expr


@dataclass(frozen=True, slots=True)
class Call(Node):
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True, slots=True)
class Attribute(Node):
    """`value.attr`; the position is the attribute name's."""

    value: Expr
    attr: str


@dataclass(frozen=True, slots=True)
class Index(Node):
    value: Expr
    index: Expr


@dataclass(frozen=True, slots=True)
class BinOp(Node):
    """`left op right` with op one of + - * /; the position is the operator's."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class UnaryOp(Node):
    op: str
    operand: Expr


Expr: TypeAlias = Name | Constant | TupleExpr | ListExpr | Call | Attribute | Index | BinOp | UnaryOp


# Statements --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Assign(Node):
    """`a = v`, `a, b = v` (unpack), `layer.trainable = v`. Targets are Names or Attributes."""

    targets: tuple[Name | Attribute, ...]
    unpack: bool
    value: Expr


@dataclass(frozen=True, slots=True)
class Return(Node):
    """`return v` or `return a, b` (a TupleExpr: several outputs)."""

    value: Expr


@dataclass(frozen=True, slots=True)
class With(Node):
    """`with device("gpu:0"), scope("x") { ... }`."""

    contexts: tuple[Expr, ...]
    body: Block


@dataclass(frozen=True, slots=True)
class ExprStmt(Node):
    expr: Expr


Stmt: TypeAlias = Assign | Return | With | ExprStmt


@dataclass(frozen=True, slots=True)
class Block(Node):
    """`{ ... }`; the position is the opening brace's."""

    body: tuple[Stmt, ...]


# Top-level items ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Import(Node):
    """`import "file.k"`; the position is the file name's."""

    path: str


@dataclass(frozen=True, slots=True)
class ModelDef(Node):
    """`model NAME { ... }` (functional) or `sequential NAME { ... }`; positioned at NAME."""

    name: str
    sequential: bool
    body: Block


@dataclass(frozen=True, slots=True)
class Param(Node):
    name: str
    default: Expr | None


@dataclass(frozen=True, slots=True)
class FuncDef(Node):
    """`def NAME(params) { ... }`: a block of layers made afresh at each call; positioned at NAME."""

    name: str
    params: tuple[Param, ...]
    body: Block


@dataclass(frozen=True, slots=True)
class TrainDef(Node):
    """`train MODEL { setting = value ... }`; positioned at MODEL."""

    name: str
    body: Block


Item: TypeAlias = Import | ModelDef | FuncDef | TrainDef


@dataclass(frozen=True, slots=True)
class Module(Node):
    file: str
    items: tuple[Item, ...]
