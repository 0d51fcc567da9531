"""Named passes and the pipelines of each optimisation level.

    -O0: the learning phase folded (inference export), dead code removed; nothing else
    -O1: + simplification, constant folding, common-subexpression elimination
    -O2: + layout (transposes cancelled), fusion (BatchNorm and affine maps into weights, Gemm)
    -O3: -O2, with layout and fusion run once more after CSE (catches what CSE exposed)

With `learning_phase="dynamic"` the phase is not folded and the phase-dependent ops stay.
Params count as constants in these inference pipelines: the exported file freezes them.
"""

from __future__ import annotations

from collections.abc import Callable

from kcompile.errors import KCompileError

from .base import Pass
from .cleanup import DeadCodeEliminationPass
from .folding import ConstantFoldingPass, CSEPass
from .fusion import FusionPass
from .input_layout import ChannelsFirstInputsPass
from .layout import LayoutPass
from .learning_phase import FoldLearningPhasePass
from .simplify import SimplifyPass

PASSES: dict[str, Callable[[], Pass]] = {
    "fold-learning-phase": FoldLearningPhasePass,
    "dce": DeadCodeEliminationPass,
    "simplify": SimplifyPass,
    "constant-folding": ConstantFoldingPass,
    "cse": CSEPass,
    "layout": LayoutPass,
    "fusion": FusionPass,
}

LEVELS: dict[int, list[str]] = {
    0: ["dce"],
    1: ["simplify", "constant-folding", "cse", "dce"],
    2: ["simplify", "cse", "constant-folding", "layout", "constant-folding", "fusion", "simplify", "cse", "dce"],
    3: [
        "simplify",
        "cse",
        "constant-folding",
        "layout",
        "constant-folding",
        "fusion",
        "cse",
        "layout",
        "fusion",
        "dce",
    ],
}


def make_pass(name: str, training: bool = False) -> Pass:
    if name not in PASSES:
        import difflib

        near = difflib.get_close_matches(name, PASSES, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise KCompileError(f"unknown pass '{name}'{hint} (passes: {', '.join(PASSES)})")
    if name == "fold-learning-phase":
        return FoldLearningPhasePass(training=training)
    return PASSES[name]()


def pipeline(
    level: int = 2, learning_phase: str = "0", names: list[str] | None = None, input_layout: str = "NHWC"
) -> list[Pass]:
    """The passes for `level` (or exactly `names`), preceded by the learning-phase fold and, for
    `input_layout="NCHW"`, by the channels-first input change."""
    if names is None:
        if level not in LEVELS:
            raise KCompileError(f"optimisation level must be 0..3, got {level}")
        names = LEVELS[level]
    passes = [make_pass(n) for n in names]
    if input_layout.upper() == "NCHW":
        passes.insert(0, ChannelsFirstInputsPass())
    elif input_layout.upper() != "NHWC":
        raise KCompileError(f"input layout must be NHWC (channels-last, Keras' default) or NCHW, got {input_layout!r}")
    if learning_phase != "dynamic":
        passes.insert(0, FoldLearningPhasePass(training=learning_phase == "1"))
    return passes
