"""`.k` source text -> `ast.Module`.

The grammar is `grammar/kdsl.lark` (shipped as package data of `kcompile.grammar`), parsed LALR(1)
by lark with a contextual lexer. A small post-lexer handles newlines (see `_Newlines`); the
Transformer `_ToAst` has one method per grammar alias and builds the immutable AST of `ast.py`,
every node positioned at the token a diagnostic should point at.

Syntax errors become `KSyntaxError`s at the offending token: what was found, what the grammar
expected there, and, where the mistake is a common one, a label found by example (as lark's
`match_examples`: the error's LALR state, token and enclosing bracket are looked up among those
of labelled example mistakes), or the bracket left open when the file or a block ends early.
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.lexer import PatternStr

from ..errors import KCompileError, SourceLoc
from . import ast

GRAMMAR_PACKAGE = "kcompile.grammar"
GRAMMAR_FILE = "kdsl.lark"


class KSyntaxError(KCompileError):
    """A `.k` program that does not parse."""


def grammar_text() -> str:
    return importlib.resources.files(GRAMMAR_PACKAGE).joinpath(GRAMMAR_FILE).read_text(encoding="utf-8")


# Newlines ----------------------------------------------------------------------------------
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}


class _Newlines:
    """Post-lexer: newlines end statements only directly inside `{ ... }`.

    Drops _NL tokens inside (...) and [...] (so calls may span lines) and outside any block
    (between top-level items), and merges consecutive ones. A `;` inside brackets is kept, so the
    parser reports it. Never looks ahead: the contextual lexer lexes in step with the parser.
    """

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        stack: list[str] = []
        last_nl = True
        for tok in stream:
            if tok.type == "_NL":
                in_block = bool(stack) and stack[-1] == "{"
                if tok.value == ";" and stack and not in_block:
                    yield tok
                elif in_block and not last_nl:
                    last_nl = True
                    yield tok
                continue
            if tok.type != "STRING":
                if tok.value in _OPENERS:
                    stack.append(tok.value)
                elif tok.value in _CLOSERS and stack:
                    stack.pop()
            last_nl = False
            yield tok


@cache
def _lark() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_Newlines(),
        propagate_positions=True,
        maybe_placeholders=False,
        start="start",
    )


# Parse tree -> AST -------------------------------------------------------------------------
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def _unquote(tok: Token, file: str) -> str:
    body = tok.value[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                col = (tok.column or 1) + 1 + i
                raise KSyntaxError(f"unknown escape '\\{nxt}' in a string", SourceLoc(file, tok.line or 1, col))
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _at(tok: Token | ast.Node) -> tuple[int, int]:
    if isinstance(tok, Token):
        return tok.line or 1, tok.column or 1
    return tok.line, tok.col


@v_args(meta=True)
class _ToAst(Transformer[Token, ast.Module]):
    """One method per alias of kdsl.lark."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _loc(self, node: ast.Node) -> SourceLoc:
        return SourceLoc(self.file, node.line, node.col)

    # Top level ---------------------------------------------------------------------------
    def module(self, meta: Any, items: list[ast.Item]) -> ast.Module:
        return ast.Module(1, 1, self.file, tuple(items))

    def import_stmt(self, meta: Any, c: list[Token]) -> ast.Import:
        return ast.Import(*_at(c[0]), _unquote(c[0], self.file))

    def model_def(self, meta: Any, c: list[Any]) -> ast.ModelDef:
        return ast.ModelDef(*_at(c[0]), str(c[0]), False, c[1])

    def sequential_def(self, meta: Any, c: list[Any]) -> ast.ModelDef:
        return ast.ModelDef(*_at(c[0]), str(c[0]), True, c[1])

    def func_def(self, meta: Any, c: list[Any]) -> ast.FuncDef:
        name, *params, body = c
        seen: set[str] = set()
        for p in params:
            if p.name in seen:
                raise KSyntaxError(f"parameter '{p.name}' appears twice in def '{name}'", self._loc(p))
            seen.add(p.name)
        defaults = [p.default is not None for p in params]
        for p, d, nxt in zip(params, defaults, defaults[1:], strict=False):
            if d and not nxt:
                raise KSyntaxError(f"a parameter without a default follows '{p.name}', which has one", self._loc(p))
        return ast.FuncDef(*_at(name), str(name), tuple(params), body)

    def train_def(self, meta: Any, c: list[Any]) -> ast.TrainDef:
        return ast.TrainDef(*_at(c[0]), str(c[0]), c[1])

    def param(self, meta: Any, c: list[Token]) -> ast.Param:
        return ast.Param(*_at(c[0]), str(c[0]), None)

    def param_default(self, meta: Any, c: list[Any]) -> ast.Param:
        return ast.Param(*_at(c[0]), str(c[0]), c[1])

    # Statements --------------------------------------------------------------------------
    def block(self, meta: Any, stmts: list[ast.Stmt]) -> ast.Block:
        for stmt, nxt in itertools.pairwise(stmts):
            if _always_returns(stmt):
                raise KSyntaxError("this statement follows a 'return' and would never run", self._loc(nxt))
        return ast.Block(meta.line, meta.column, tuple(stmts))

    def assign(self, meta: Any, c: list[Any]) -> ast.Assign:
        lhs, value = c
        unpack = isinstance(lhs, ast.TupleExpr) and _bare(lhs)
        targets = lhs.items if unpack else (lhs,)
        for t in targets:
            if not isinstance(t, ast.Name | ast.Attribute):
                what = _describe_target(t)
                raise KSyntaxError(f"cannot assign to {what}; the left of '=' takes names (a or a, b)", self._loc(t))
        return ast.Assign(*_at(targets[0]), tuple(targets), unpack, value)  # type: ignore[arg-type]

    def return_stmt(self, meta: Any, c: list[ast.Expr]) -> ast.Return:
        return ast.Return(meta.line, meta.column, c[0])

    def with_stmt(self, meta: Any, c: list[Any]) -> ast.With:
        *contexts, body = c
        return ast.With(meta.line, meta.column, tuple(contexts), body)

    def expr_stmt(self, meta: Any, c: list[ast.Expr]) -> ast.ExprStmt:
        return ast.ExprStmt(*_at(c[0]), c[0])

    def exprs(self, meta: Any, c: list[ast.Expr]) -> ast.Expr:
        return c[0] if len(c) == 1 else _BareTuple(meta.line, meta.column, tuple(c))

    def exprs_comma(self, meta: Any, c: list[ast.Expr]) -> ast.Expr:
        return _BareTuple(meta.line, meta.column, tuple(c))

    # Expressions -------------------------------------------------------------------------
    def _binary(self, op: str, c: list[Any]) -> ast.BinOp:
        left, tok, right = c
        return ast.BinOp(*_at(tok), op, left, right)

    def add(self, meta: Any, c: list[Any]) -> ast.BinOp:
        return self._binary("+", c)

    def sub(self, meta: Any, c: list[Any]) -> ast.BinOp:
        return self._binary("-", c)

    def mul(self, meta: Any, c: list[Any]) -> ast.BinOp:
        return self._binary("*", c)

    def div(self, meta: Any, c: list[Any]) -> ast.BinOp:
        return self._binary("/", c)

    def neg(self, meta: Any, c: list[Any]) -> ast.Expr:
        tok, operand = c
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float):
            return ast.Constant(*_at(tok), -operand.value)  # type: ignore[operator]
        return ast.UnaryOp(*_at(tok), "-", operand)

    def pos(self, meta: Any, c: list[Any]) -> ast.UnaryOp:
        return ast.UnaryOp(*_at(c[0]), "+", c[1])

    def call(self, meta: Any, c: list[Any]) -> ast.Call:
        func, *args = c
        positional: list[ast.Expr] = []
        keywords: list[ast.Keyword] = []
        for a in args:
            if isinstance(a, ast.Keyword):
                if any(k.name == a.name for k in keywords):
                    raise KSyntaxError(f"argument '{a.name}' is given twice", self._loc(a))
                keywords.append(a)
            elif keywords:
                raise KSyntaxError("a positional argument cannot follow keyword arguments", self._loc(a))
            else:
                positional.append(a)
        return ast.Call(meta.line, meta.column, func, tuple(positional), tuple(keywords))

    def kwarg(self, meta: Any, c: list[Any]) -> ast.Keyword:
        return ast.Keyword(*_at(c[0]), str(c[0]), c[1])

    def attr(self, meta: Any, c: list[Any]) -> ast.Attribute:
        return ast.Attribute(*_at(c[1]), c[0], str(c[1]))

    def index(self, meta: Any, c: list[Any]) -> ast.Index:
        return ast.Index(meta.line, meta.column, c[0], c[1])

    def name(self, meta: Any, c: list[Token]) -> ast.Name:
        return ast.Name(*_at(c[0]), str(c[0]))

    def int(self, meta: Any, c: list[Token]) -> ast.Constant:
        return ast.Constant(*_at(c[0]), int(c[0].value))

    def float(self, meta: Any, c: list[Token]) -> ast.Constant:
        return ast.Constant(*_at(c[0]), float(c[0].value))

    def string(self, meta: Any, c: list[Token]) -> ast.Constant:
        return ast.Constant(*_at(c[0]), _unquote(c[0], self.file))

    def true(self, meta: Any, c: list[Any]) -> ast.Constant:
        return ast.Constant(meta.line, meta.column, True)

    def false(self, meta: Any, c: list[Any]) -> ast.Constant:
        return ast.Constant(meta.line, meta.column, False)

    def none(self, meta: Any, c: list[Any]) -> ast.Constant:
        return ast.Constant(meta.line, meta.column, None)

    def tuple(self, meta: Any, c: list[ast.Expr]) -> ast.TupleExpr:
        return ast.TupleExpr(meta.line, meta.column, tuple(c))

    def list(self, meta: Any, c: list[ast.Expr]) -> ast.ListExpr:
        return ast.ListExpr(meta.line, meta.column, tuple(c))


class _BareTuple(ast.TupleExpr):
    """`a, b` written without brackets (an unpacking target, or several return values)."""

    __slots__ = ()


def _bare(e: ast.Expr) -> bool:
    return isinstance(e, _BareTuple)


def _describe_target(e: ast.Expr) -> str:
    if isinstance(e, ast.Call):
        return "a call"
    if isinstance(e, ast.Constant):
        return f"the constant {e.value!r}"
    if isinstance(e, ast.TupleExpr | ast.ListExpr):
        return "a bracketed group"
    if isinstance(e, ast.BinOp | ast.UnaryOp):
        return "an arithmetic expression"
    return "this expression"


def _always_returns(stmt: ast.Stmt) -> bool:
    if isinstance(stmt, ast.Return):
        return True
    if isinstance(stmt, ast.With):
        return any(_always_returns(s) for s in stmt.body.body)
    return False


# Syntax errors -----------------------------------------------------------------------------
# Common mistakes, recognised by example: an error whose parser state and offending token type
# are those of an example gets the example's label (as lark's `match_examples`, but matching the
# LALR state alone, not the whole stack, so that a mistake is recognised at any nesting depth).
_EXAMPLES: dict[str, list[str]] = {
    "write one statement per line, or separate them with ';'": [
        "model m {\n x = a b\n}",
        "model m {\n x = f(a) y = 1\n}",
        "model m {\n x = 1 y = 1\n}",
        "model m {\n x = 'a' y = 1\n}",
        "model m {\n x = [a] y = 1\n}",
        "model m {\n x = a.b y = 1\n}",
    ],
    "separate arguments with ','": [
        "model m {\n x = f(a b)\n}",
        "model m {\n x = f(1 b)\n}",
        "model m {\n x = f(a=1 b=2)\n}",
        "model m {\n x = f('a' b)\n}",
        "model m {\n x = f(g(a) b)\n}",
    ],
    "a model needs a name: model NAME { ... }": ["model {", "sequential {"],
    'import takes a file name in quotes: import "file.k"': ["import foo", "import foo.k"],
    "statements go inside a model, sequential, def or train block": ["x = 1", "Dense(3)"],
    "'=' needs a value on its right": ["model m {\n x =\n}", "model m {\n x = }"],
    "'return' needs a value": ["model m {\n return\n}", "model m {\n return }"],
    "'==' and other comparisons do not exist in .k; '=' assigns": ["model m {\n x == b\n}"],
}


def _state_of(err: UnexpectedInput) -> int | None:
    state = getattr(err, "state", None)
    return getattr(state, "position", None)


def _example_key(err: UnexpectedToken, text: str) -> tuple[int | None, str, str]:
    """What identifies a mistake: the LALR state, the token found, and the innermost bracket."""
    pos = len(text) if err.token.type == "$END" else (err.token.start_pos or 0)
    opened = _open_brackets(text, pos)
    return _state_of(err), err.token.type, opened[-1][0] if opened else ""


@cache
def _example_labels() -> dict[tuple[int | None, str, str], str]:
    table: dict[tuple[int | None, str, str], str] = {}
    for label, examples in _EXAMPLES.items():
        for example in examples:
            try:
                _lark().parse(example)
            except UnexpectedToken as err:
                table.setdefault(_example_key(err, example), label)
    return table


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "';'" if tok.value == ";" else "end of line"
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type in ("INT", "FLOAT"):
        return f"number {tok.value}"
    if tok.type == "STRING":
        return f"string {tok.value}"
    return f"'{tok.value}'"


_EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "LSQB", "MINUS", "PLUS", "TRUE", "FALSE", "NONE"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "LPAR", "DOT", "LSQB"}


def _describe_expected(names: set[str]) -> str:
    lark = _lark()
    parts: list[str] = []
    rest = set(names)
    if len(rest & _EXPR_START) >= 8:
        parts.append("an expression")
        rest -= _EXPR_START
    if _OPERATORS <= rest:
        parts.append("an operator")
        rest -= _OPERATORS
    for name in sorted(rest):
        if name == "_NL":
            parts.append("a new line")
        elif name == "$END":
            parts.append("end of file")
        elif name == "NAME":
            parts.append("a name")
        elif name in ("INT", "FLOAT"):
            if "a number" not in parts:
                parts.append("a number")
        elif name == "STRING":
            parts.append("a string")
        else:
            try:
                pattern = lark.get_terminal(name).pattern
            except KeyError:
                parts.append(name)
                continue
            parts.append(f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower())
    if not parts:
        return "nothing more"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


_BRACKETS = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|[()\[\]{}]")


def _open_brackets(text: str, pos: int) -> list[tuple[str, int]]:
    """The brackets still open at offset `pos` (outermost first), with their offsets."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKETS.finditer(text, 0, pos):
        ch = m.group()
        if ch in _OPENERS:
            stack.append((ch, m.start()))
        elif ch in _CLOSERS and stack and _OPENERS[stack[-1][0]] == ch:
            stack.pop()
    return stack


def _unclosed_hint(text: str, pos: int, found: str) -> str:
    """For an error at a '}' or at the end of the file: the bracket left open, if that explains it."""
    opened = _open_brackets(text, pos)
    if not opened or (found == "}" and opened[-1][0] == "{"):
        return ""
    ch, at = opened[-1]
    return f"'{ch}' at line {text.count(chr(10), 0, at) + 1} is not closed"


def _syntax_error(err: UnexpectedInput, text: str, file: str) -> KSyntaxError:
    line, col = err.line, err.column
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        if ch in ("'", '"'):
            msg = "this string is not closed on its line"
        elif ch.isspace():
            msg = f"unexpected whitespace character {ch!r}"
        else:
            msg = f"unexpected character {ch!r}"
            if ch == ":":
                msg += "; blocks are written in braces: { ... }"
            elif ch in ("!", "<", ">"):
                msg += "; .k has no comparisons"
        return KSyntaxError(msg, SourceLoc(file, line, col))
    if isinstance(err, UnexpectedToken | UnexpectedEOF):
        tok: Token = err.token if isinstance(err, UnexpectedToken) else Token("$END", "")
        # `accepts` simulates the parser (exact); `expected` is the LALR state's (merged) table.
        accepts = err.accepts if isinstance(err, UnexpectedToken) else None
        expected = {t for t in (accepts or err.expected or ()) if not t.startswith("__")}
        msg = f"unexpected {_describe_token(tok)}; expected {_describe_expected(expected)}"
        label = _example_labels().get(_example_key(err, text)) if isinstance(err, UnexpectedToken) else None
        if tok.type == "$END" or (tok.type == "RBRACE" and "RBRACE" not in expected):
            lines = text.splitlines() or [""]
            if tok.type == "$END":
                line, col = len(lines), len(lines[-1]) + 1
                if not lines[-1].strip():
                    line, col = max(1, len(lines)), 1
            pos = len(text) if tok.type == "$END" else (tok.start_pos or 0)
            hint = _unclosed_hint(text, pos, "}" if tok.type == "RBRACE" else "")
            if hint:
                label = label or hint
        if tok.type != "$END":
            line, col = tok.line or line, tok.column or col
        if label:
            msg += f" ({label})"
        return KSyntaxError(msg, SourceLoc(file, max(1, line or 1), max(1, col or 1)))
    return KSyntaxError(f"syntax error: {err}", SourceLoc(file, max(1, line or 1), max(1, col or 1)))


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse `.k` source text; `file` names it in diagnostics."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, file) from None
    try:
        return _ToAst(file).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, KCompileError):
            raise err.orig_exc from None
        raise
    except RecursionError:
        raise KSyntaxError("the program is nested too deeply", SourceLoc(file, 1, 1)) from None
