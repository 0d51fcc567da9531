"""The `.k` grammar and parser: aliases <-> Transformer methods, AST shapes and positions, the
language's smaller features (literals, one-line blocks, contextual keywords, tensor arithmetic)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kcompile as kc
from kcompile.lang import ast, load_source, parse
from kcompile.lang.parser import KSyntaxError, _ToAst, grammar_text


def test_every_grammar_alias_has_a_transformer_method_and_back() -> None:
    rules = re.sub(r"//.*", "", grammar_text())
    aliases = set(re.findall(r"->\s*(\w+)", rules))
    methods = {name for name in vars(_ToAst) if not name.startswith("_")}
    assert aliases == methods


def test_every_alternative_is_named() -> None:
    # Alternatives without an alias are only pass-throughs of `?` rules (one child).
    for rule in re.split(r"\n(?=\??\w+:)", grammar_text().split("PLUS:")[0]):
        if not re.match(r"\??\w+:", rule) or rule.startswith("?"):
            continue
        for alt in re.split(r"\n\s*\|", rule.split(":", 1)[1]):
            alt = re.sub(r"//.*", "", alt).strip()
            assert "->" in alt, f"unnamed alternative: {alt!r}"


def test_positions_point_at_the_token_a_diagnostic_needs() -> None:
    module = parse('model m {\n    y = 0.5 * (a + b)\n    z = Dense(3, name="d")(y)\n}\n', "p.k")
    (model,) = module.items
    assert isinstance(model, ast.ModelDef) and (model.line, model.col) == (1, 7)
    first, second = model.body.body
    assert isinstance(first, ast.Assign) and isinstance(first.value, ast.BinOp)
    mul = first.value
    assert (mul.op, mul.line, mul.col) == ("*", 2, 13)
    assert isinstance(mul.right, ast.BinOp) and (mul.right.line, mul.right.col) == (2, 18)
    assert isinstance(second, ast.Assign) and isinstance(second.value, ast.Call)
    call = second.value
    assert (call.line, call.col) == (3, 9) and isinstance(call.func, ast.Call)
    (kw,) = call.func.kwargs
    assert (kw.name, kw.line, kw.col, kw.value) == ("name", 3, 18, ast.Constant(3, 23, "d"))


def test_literals_follow_python() -> None:
    line = "    v = (1, -2, 3.5, .5, 1e-3, True, False, None, 'a\\'b', \"c\\n\", [], (), (7,), [8,])"
    module = parse(f"model m {{\n{line}\n}}\n")
    (assign,) = module.items[0].body.body  # type: ignore[union-attr]
    assert isinstance(assign, ast.Assign) and isinstance(assign.value, ast.TupleExpr)
    items = assign.value.items
    values = [i.value for i in items[:10]]  # type: ignore[union-attr]
    assert values == [1, -2, 3.5, 0.5, 1e-3, True, False, None, "a'b", "c\n"]
    assert items[10] == ast.ListExpr(2, line.index("[]") + 1, ())
    assert items[11] == ast.TupleExpr(2, line.index("()") + 1, ())
    assert isinstance(items[12], ast.TupleExpr) and len(items[12].items) == 1
    assert isinstance(items[13], ast.ListExpr) and len(items[13].items) == 1


def test_comments_blank_lines_semicolons_and_multiline_calls() -> None:
    src = """
# a comment before everything
model m {   # after the brace

    x = Input(shape=(4,)); y = Dense(
        3,            # inside a call
        activation="relu",
    )(x)
    return y  # trailing
}
"""
    program = load_source(src, "c.k")
    assert [layer.name for layer in program.model("m").layers] == ["input_layer", "dense"]


def test_keywords_are_contextual() -> None:
    src = "model m {\n    model = Input(shape=(4,))\n    train = Dense(2)\n    return train(model)\n}\n"
    assert load_source(src, "k.k").model().outputs[0].shape == (None, 2)


def test_several_with_contexts_and_scopes_nest() -> None:
    src = (
        "model m {\n    x = Input(shape=(4,))\n"
        '    with device("gpu:1"), scope("outer") {\n        with scope("inner") { y = Dense(2)(x) }\n    }\n'
        "    return y\n}\n"
    )
    graph = load_source(src, "w.k").model().to_graph()
    assert {p.name for p in graph.params} == {"outer/inner/dense/kernel", "outer/inner/dense/bias"}
    assert {n.device for n in graph.nodes} == {"gpu:1"}


def test_arithmetic_on_tensors_and_numbers() -> None:
    src = "model m {\n    x = Input(shape=(3,))\n    return -x / 2 + 3 * x - (1 - 4) * x\n}\n"
    model = load_source(src, "a.k").model()
    x = np.array([[1.0, 2.0, -3.0]], dtype=np.float32)
    np.testing.assert_allclose(kc.compile(model)(x), -x / 2 + 3 * x + 3 * x, rtol=1e-6)


def test_def_defaults_keywords_tuple_returns_and_indexing() -> None:
    src = """
def pair(x, units=2, act="relu") {
    return Dense(units, activation=act)(x), Dense(units)(x)
}
model m {
    x = Input(shape=(4,))
    a, b = pair(x, act="tanh")
    both = pair(x, units=3)
    return a, both[1]
}
"""
    model = load_source(src, "d.k").model()
    assert [t.shape for t in model.outputs] == [(None, 2), (None, 3)]
    # Each call of the def made two fresh layers; the model uses a, b's twin from the 2nd call.
    assert [layer.name for layer in model.layers[1:]] == ["dense", "dense_3"]


def test_reading_attributes() -> None:
    src = "model m {\n    x = Input(shape=(2, 3))\n    return Reshape((x.shape[2], x.shape[1]))(x)\n}\n"
    assert load_source(src, "r.k").model().outputs[0].shape == (None, 3, 2)


def test_integer_inputs_and_symbolic_dims() -> None:
    src = (
        'model m {\n    ids = Input(shape=(None,), dtype="int32")\n'
        "    return GlobalAveragePooling1D()(Embedding(100, 8)(ids))\n}\n"
    )
    graph = load_source(src, "e.k").model().to_graph()
    assert str(graph.inputs[0].type).startswith("int32[None, ")


def test_model_with_several_inputs_called_like_keras() -> None:
    src = (
        "model pairwise {\n    a = Input(shape=(4,))\n    b = Input(shape=(4,))\n    return subtract([a, b])\n}\n"
        "model m {\n    x = Input(shape=(4,))\n    return pairwise([x, x]) + pairwise(x, x)\n}\n"
    )
    graph = load_source(src, "p.k").model("m").to_graph()
    assert graph.op_counts()["sub"] == 2


def test_syntax_errors_are_ksyntaxerrors_with_locations() -> None:
    with pytest.raises(KSyntaxError) as info:
        parse("model m {\n    x = (1, 2\n}\n", "s.k")
    assert info.value.loc == kc.SourceLoc("s.k", 3, 1)
    assert "'(' at line 2 is not closed" in info.value.message
