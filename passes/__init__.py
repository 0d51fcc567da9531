"""Graph -> graph transformations and the pass manager (installed as `kcompile.passes`)."""

from .base import Pass, PassManager, PassResult
from .cleanup import DeadCodeEliminationPass
from .folding import ConstantFoldingPass, CSEPass
from .fusion import FUSION, FusionPass
from .input_layout import ChannelsFirstInputsPass
from .layout import BOUNDARY, LAYOUT, LayoutPass
from .learning_phase import FoldLearningPhasePass
from .pipeline import LEVELS, PASSES, make_pass, pipeline
from .rewrite import Constants, P, Rule, RuleSet, V, apply_rules
from .simplify import SIMPLIFY, SimplifyPass

__all__ = [
    "BOUNDARY",
    "FUSION",
    "LAYOUT",
    "LEVELS",
    "PASSES",
    "SIMPLIFY",
    "CSEPass",
    "ChannelsFirstInputsPass",
    "ConstantFoldingPass",
    "Constants",
    "DeadCodeEliminationPass",
    "FoldLearningPhasePass",
    "FusionPass",
    "LayoutPass",
    "P",
    "Pass",
    "PassManager",
    "PassResult",
    "Rule",
    "RuleSet",
    "SimplifyPass",
    "V",
    "apply_rules",
    "make_pass",
    "pipeline",
]
