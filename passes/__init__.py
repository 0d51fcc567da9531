"""Graph -> graph transformations and the pass manager (installed as `kcompile.passes`)."""

from .base import Pass, PassManager, PassResult
from .cleanup import DeadCodeEliminationPass
from .learning_phase import FoldLearningPhasePass

__all__ = ["DeadCodeEliminationPass", "FoldLearningPhasePass", "Pass", "PassManager", "PassResult"]
