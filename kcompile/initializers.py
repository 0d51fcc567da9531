"""Keras 3 weight initializers, drawn from one seeded generator.

`kc.set_random_seed(s)` makes every weight created afterwards reproducible. Fans follow Keras:
for a kernel of shape (*receptive, in, out), fan_in = in * prod(receptive), fan_out likewise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import ModelError

_rng = np.random.default_rng(0)


def set_random_seed(seed: int) -> None:
    """Reseed the generator that weight initializers (and layer seeds) draw from."""
    global _rng
    _rng = np.random.default_rng(seed)


def rng() -> np.random.Generator:
    return _rng


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = float(np.prod(shape[:-2])) if len(shape) > 2 else 1.0
    return shape[-2] * receptive, shape[-1] * receptive


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[[tuple[int, ...]], np.ndarray]:
    def init(shape: tuple[int, ...]) -> np.ndarray:
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        if distribution == "uniform":
            limit = math.sqrt(3.0 * scale / max(1.0, n))
            return _rng.uniform(-limit, limit, shape)
        # Truncated normal at two standard deviations, rescaled as Keras does.
        std = math.sqrt(scale / max(1.0, n)) / 0.87962566103423978
        out = _rng.normal(0.0, std, shape)
        bad = np.abs(out) > 2 * std
        while bad.any():
            out[bad] = _rng.normal(0.0, std, int(bad.sum()))
            bad = np.abs(out) > 2 * std
        return out

    return init


def _orthogonal(shape: tuple[int, ...]) -> np.ndarray:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    cols = shape[-1]
    a = _rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q[:rows, :cols].reshape(shape)


INITIALIZERS: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
    "zeros": np.zeros,
    "ones": np.ones,
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "orthogonal": _orthogonal,
    "random_uniform": lambda shape: _rng.uniform(-0.05, 0.05, shape),
    "random_normal": lambda shape: _rng.normal(0.0, 0.05, shape),
}


def initialize(spec: Any, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Values for a new weight. `spec` is a Keras initializer name, a constant, or an array."""
    if isinstance(spec, np.ndarray):
        if spec.shape != shape:
            raise ModelError(f"initial value has shape {spec.shape}, the weight needs {shape}")
        return spec.astype(dtype)
    if isinstance(spec, int | float):
        return np.full(shape, spec, dtype)
    key = str(spec).lower()
    if key not in INITIALIZERS:
        raise ModelError(f"unknown initializer {spec!r}; known: {', '.join(sorted(INITIALIZERS))}")
    return np.asarray(INITIALIZERS[key](shape), dtype=dtype)
