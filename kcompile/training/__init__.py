"""Training: autodiff-built step graphs, Keras-exact optimizers, losses, metrics, fit/evaluate.

Importing this package registers the training ops (`kcompile.ops.training_ops`) and every op's
gradient rule (`kcompile.ops.gradients`).
"""

from ..ops import gradients, training_ops  # noqa: F401  (registers the training ops and gradient rules)
from . import callbacks, losses, metrics, optimizers, regularizers
from .callbacks import Callback, History

__all__ = ["Callback", "History", "callbacks", "losses", "metrics", "optimizers", "regularizers"]
