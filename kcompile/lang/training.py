"""`train MODEL { ... }` blocks -> validated `TrainSpec`s, kept as data on the loaded program.

Training itself is the trainer's business; here a block's settings are checked the way
`keras.Model.compile` and `fit` would check them (known optimizer with known arguments, known
loss and metric names, positive batch size and epochs) and stored. Values are literals: numbers,
strings, booleans, lists, tuples, and optimizer calls such as `SGD(learning_rate=0.5)`.

    model.compile(**spec.compile_args()); model.fit(x, y, **spec.fit_args())
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

from ..errors import KCompileError, SourceLoc
from . import ast
from .builtins import did_you_mean

_COMMON = {"weight_decay": None, "clipnorm": None, "clipvalue": None, "global_clipnorm": None}
_ADAM = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}

# Keras 3 optimizers and their arguments with Keras' defaults.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    "Adam": {**_ADAM, "amsgrad": False},
    "AdamW": {**_ADAM, "weight_decay": 0.004, "amsgrad": False},
    "RMSprop": {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False},
    "Adagrad": {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
    "Adadelta": {"learning_rate": 0.001, "rho": 0.95, "epsilon": 1e-7},
    "Adamax": dict(_ADAM),
    "Nadam": dict(_ADAM),
}
_BOOL_ARGS = {"nesterov", "amsgrad", "centered"}

LOSSES = {
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "mean_squared_error",
    "mse",
    "mean_absolute_error",
    "mae",
    "mean_absolute_percentage_error",
    "mape",
    "mean_squared_logarithmic_error",
    "msle",
    "huber",
    "log_cosh",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "kl_divergence",
    "kld",
    "poisson",
    "cosine_similarity",
}
METRICS = LOSSES | {
    "accuracy",
    "acc",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "auc",
    "precision",
    "recall",
}
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
SETTINGS = ("optimizer", "loss", "metrics", "batch_size", "epochs", "validation_split", "shuffle", "loss_weights")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{self.name}({args})"

    def keras_config(self) -> dict[str, Any]:
        """Keras' serialised form, `{"class_name": "SGD", "config": {...}}`."""
        return {"class_name": self.name, "config": dict(self.config)}


@dataclass(frozen=True)
class TrainSpec:
    """How to train one model; `loss` is one name, or one per model output."""

    model: str
    optimizer: OptimizerSpec
    loss: str | tuple[str, ...]
    metrics: tuple[str, ...] = ()
    batch_size: int = 32
    epochs: int = 1
    validation_split: float = 0.0
    shuffle: bool = True
    loss_weights: tuple[float, ...] | None = None
    loc: SourceLoc | None = None

    def compile_args(self) -> dict[str, Any]:
        """Keyword arguments for `model.compile(...)`."""
        return {
            "optimizer": self.optimizer.keras_config(),
            "loss": self.loss if isinstance(self.loss, str) else list(self.loss),
            "metrics": list(self.metrics),
            "loss_weights": list(self.loss_weights) if self.loss_weights is not None else None,
        }

    def fit_args(self) -> dict[str, Any]:
        """Keyword arguments for `model.fit(x, y, ...)`."""
        return {
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "validation_split": self.validation_split,
            "shuffle": self.shuffle,
        }

    def summary(self) -> str:
        loss = self.loss if isinstance(self.loss, str) else ", ".join(self.loss)
        parts = [f"optimizer {self.optimizer}", f"loss {loss}"]
        if self.metrics:
            parts.append(f"metrics {', '.join(self.metrics)}")
        parts.append(f"batch size {self.batch_size}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}")
        if self.validation_split:
            parts.append(f"validation split {self.validation_split}")
        return "; ".join(parts)


class _Settings:
    def __init__(self, file: str) -> None:
        self.file = file

    def loc(self, node: ast.Node) -> SourceLoc:
        return SourceLoc(self.file, node.line, node.col)

    def fail(self, message: str, node: ast.Node) -> KCompileError:
        return KCompileError(message, self.loc(node))

    def value(self, e: ast.Expr) -> Any:
        """A literal setting value: constants, lists, tuples, +-*/ on numbers, optimizer calls."""
        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, ast.ListExpr):
            return [self.value(x) for x in e.items]
        if isinstance(e, ast.TupleExpr):
            return tuple(self.value(x) for x in e.items)
        if isinstance(e, ast.UnaryOp):
            v = self.value(e.operand)
            if not _number(v):
                raise self.fail(f"'{e.op}' needs a number", e)
            return -v if e.op == "-" else v
        if isinstance(e, ast.BinOp):
            a, b = self.value(e.left), self.value(e.right)
            if not (_number(a) and _number(b)):
                raise self.fail(f"'{e.op}' in a train block works on numbers only", e)
            if e.op == "/" and b == 0:
                raise self.fail("division by zero", e)
            return _ARITHMETIC[e.op](a, b)
        if isinstance(e, ast.Call):
            return self.optimizer_call(e)
        if isinstance(e, ast.Name):
            raise self.fail(
                f"train settings take literal values (numbers, strings, lists, optimizer calls), not the name '{e.id}'",
                e,
            )
        raise self.fail("train settings take literal values (numbers, strings, lists, optimizer calls)", e)

    def optimizer_call(self, e: ast.Call) -> OptimizerSpec:
        if not isinstance(e.func, ast.Name):
            raise self.fail("only an optimizer can be called in a train block, e.g. SGD(learning_rate=0.01)", e)
        name = self.optimizer_name(e.func.id, e.func)
        known = list(dict.fromkeys([*OPTIMIZERS[name], *_COMMON]))
        if len(e.args) > 1:
            raise self.fail(f"{name} takes one positional argument (learning_rate); name the others", e.args[1])
        config: dict[str, Any] = {}
        pairs: list[tuple[str, ast.Node, ast.Expr]] = [("learning_rate", a, a) for a in e.args]
        pairs += [(k.name, k, k.value) for k in e.kwargs]
        for key, where, expr in pairs:
            if key not in known:
                raise self.fail(
                    f"{name} has no argument '{key}'{did_you_mean(key, known, inline=True)}; "
                    f"its arguments: {', '.join(known)}",
                    where,
                )
            if key in config:
                raise self.fail(f"argument '{key}' is given twice", where)
            v = self.value(expr)
            if key in _BOOL_ARGS:
                if not isinstance(v, bool):
                    raise self.fail(f"{name} argument '{key}' must be True or False, got {v!r}", expr)
            elif not _number(v) or v < 0:
                raise self.fail(f"{name} argument '{key}' must be a non-negative number, got {v!r}", expr)
            config[key] = v
        return OptimizerSpec(name, config)

    def optimizer_name(self, text: str, node: ast.Node) -> str:
        by_lower = {k.lower(): k for k in OPTIMIZERS}
        if text in OPTIMIZERS or text.lower() in by_lower:
            return by_lower[text.lower()]
        raise self.fail(
            f"unknown optimizer '{text}'{did_you_mean(text, OPTIMIZERS, inline=True)}; known: {', '.join(OPTIMIZERS)}",
            node,
        )


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _names(value: Any, known: set[str], what: str, node: ast.Node, s: _Settings) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    if not items or not all(isinstance(v, str) for v in items):
        raise s.fail(f'{what} takes a name or a list of names, e.g. "accuracy"; got {value!r}', node)
    for v in items:
        if v not in known:
            raise s.fail(f'unknown {what} "{v}"{did_you_mean(v, known, inline=True)}', node)
    return tuple(items)


def train_spec(block: ast.TrainDef, file: str, outputs: int) -> TrainSpec:
    """Check a train block's settings against Keras' compile/fit and return them as a TrainSpec.

    `outputs` is the model's number of outputs (a per-output loss list must match it).
    """
    s = _Settings(file)
    got: dict[str, tuple[Any, ast.Expr]] = {}
    for stmt in block.body.body:
        if not isinstance(stmt, ast.Assign) or stmt.unpack or not isinstance(stmt.targets[0], ast.Name):
            raise s.fail("a train block holds settings, one per line: NAME = VALUE", stmt)
        key = stmt.targets[0].id
        if key not in SETTINGS:
            raise s.fail(
                f"unknown training setting '{key}'{did_you_mean(key, SETTINGS, inline=True)}; "
                f"known: {', '.join(SETTINGS)}",
                stmt,
            )
        if key in got:
            raise s.fail(f"'{key}' is set twice in this train block", stmt)
        got[key] = (s.value(stmt.value), stmt.value)
    if "loss" not in got:
        raise s.fail(
            f"the train block for '{block.name}' needs a loss, e.g. loss = \"categorical_crossentropy\"", block
        )

    optimizer = OptimizerSpec("RMSprop", {})  # keras.Model.compile's default
    if "optimizer" in got:
        v, node = got["optimizer"]
        if isinstance(v, str):
            v = OptimizerSpec(s.optimizer_name(v, node), {})
        if not isinstance(v, OptimizerSpec):
            raise s.fail(f'optimizer takes a name ("adam") or a call (Adam(learning_rate=0.001)), got {v!r}', node)
        optimizer = v
    v, node = got["loss"]
    losses = _names(v, LOSSES, "loss", node, s)
    if isinstance(v, list | tuple) and len(losses) != outputs:
        raise s.fail(f"model '{block.name}' has {outputs} output(s) but {len(losses)} losses are given", node)
    loss: str | tuple[str, ...] = losses if isinstance(v, list | tuple) else losses[0]
    metrics: tuple[str, ...] = ()
    if "metrics" in got:
        v, node = got["metrics"]
        metrics = _names(v, METRICS, "metric", node, s) if v != [] else ()

    def positive_int(key: str, default: int) -> int:
        if key not in got:
            return default
        v, node = got[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise s.fail(f"{key} must be a positive integer, got {v!r}", node)
        return v

    split = 0.0
    if "validation_split" in got:
        v, node = got["validation_split"]
        if not _number(v) or not 0 <= v < 1:
            raise s.fail(f"validation_split must be a number in [0, 1), got {v!r}", node)
        split = float(v)
    shuffle = True
    if "shuffle" in got:
        v, node = got["shuffle"]
        if not isinstance(v, bool):
            raise s.fail(f"shuffle must be True or False, got {v!r}", node)
        shuffle = v
    weights = None
    if "loss_weights" in got:
        v, node = got["loss_weights"]
        if not isinstance(v, list | tuple) or not all(_number(w) for w in v) or len(v) != outputs:
            raise s.fail(f"loss_weights takes one number per model output ({outputs}), got {v!r}", node)
        weights = tuple(float(w) for w in v)
    return TrainSpec(
        model=block.name,
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        batch_size=positive_int("batch_size", 32),
        epochs=positive_int("epochs", 1),
        validation_split=split,
        shuffle=shuffle,
        loss_weights=weights,
        loc=s.loc(block),
    )
