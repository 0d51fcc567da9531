"""kcompile: a compiler from Keras-style models to optimized ONNX and TVM programs.

Example:
    >>> import kcompile as kc
    >>> x = kc.Input(shape=(784,))
    >>> y = kc.layers.Dense(10, activation="softmax")(x)
    >>> kc.compile(kc.Model(x, y)).save("model.onnx")
"""

__version__ = "0.1.0"

from . import layers
from .api import compile, optimize
from .errors import GraphError, KCompileError, LoweringError, ModelError, RuntimeFailure, ShapeError, SourceLoc
from .initializers import set_random_seed
from .layers.base import Input, clear_session, device, name_scope
from .loading import load
from .model import Model, Sequential
from .training import callbacks, losses, metrics, optimizers, regularizers

__all__ = [
    "GraphError",
    "Input",
    "KCompileError",
    "LoweringError",
    "Model",
    "ModelError",
    "RuntimeFailure",
    "Sequential",
    "ShapeError",
    "SourceLoc",
    "__version__",
    "callbacks",
    "clear_session",
    "compile",
    "device",
    "layers",
    "load",
    "losses",
    "metrics",
    "name_scope",
    "optimize",
    "optimizers",
    "regularizers",
    "set_random_seed",
]
