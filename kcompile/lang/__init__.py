"""The `.k` model language: `.k` text -> AST (`parser`) -> `kc.Model`s (`translator`).

    program = load_program("examples/replicas.k")
    model = program.model("replicas")            # a kc.Model, ready for kc.compile
    program.training.get("mnist")                # the TrainSpec of a `train mnist { ... }` block

The grammar is `grammar/kdsl.lark`. `kc.load(path, model=...)` (kcompile/loading.py) is the
one-call form.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from ..errors import ModelError, SourceLoc
from ..model import Model
from .parser import KSyntaxError, parse
from .training import OptimizerSpec, TrainSpec
from .translator import FileScope, Translator

__all__ = [
    "KSyntaxError",
    "OptimizerSpec",
    "Program",
    "TrainSpec",
    "load_program",
    "load_source",
    "parse",
]


@dataclass
class Program:
    """A loaded `.k` file: every model in scope (imported ones first) and the train specs."""

    path: str
    models: dict[str, Model]
    own: list[str]
    training: dict[str, TrainSpec]
    locations: dict[str, SourceLoc] = field(default_factory=dict)

    def model(self, name: str | None = None) -> Model:
        """The model called `name`; without a name, the file's only model."""
        if name is None:
            if len(self.own) == 1:
                return self.models[self.own[0]]
            if not self.own:
                raise ModelError(f"{self.path} defines no model")
            raise ModelError(
                f"{self.path} defines {len(self.own)} models ({', '.join(self.own)}); "
                "choose one (--model NAME on the command line, model=NAME in kc.load)"
            )
        if name not in self.models:
            near = difflib.get_close_matches(name, list(self.models), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            known = f" (models: {', '.join(self.models)})" if self.models else ""
            raise ModelError(f"{self.path} has no model '{name}'{hint}{known}")
        return self.models[name]

    def train_spec(self, name: str) -> TrainSpec | None:
        return self.training.get(name)


def _program(scope: FileScope) -> Program:
    models = {n: b.value for n, b in scope.names.items() if b.kind == "model"}
    locations = {n: b.loc for n, b in scope.names.items() if b.kind == "model"}
    return Program(scope.path, models, list(scope.own_models), dict(scope.training), locations)


def load_program(path: str) -> Program:
    """Parse and run a `.k` file (and its imports) and build every model in it."""
    return _program(Translator().load_file(path))


def load_source(text: str, path: str = "<string>") -> Program:
    """As `load_program`, from text; `path` names it in diagnostics and anchors its imports."""
    return _program(Translator().load_text(text, path))
