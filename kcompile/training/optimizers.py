"""Keras 3 optimizers as graph builders, with the update rules of the torch back end
(`keras/src/backend/torch/optimizers/*.py`) so that trained weights match Keras.

An optimizer emits, for each trainable weight w with gradient g and its slot values (momenta,
...), the new weight and new slots. The learning rate and the step `t = iterations + 1` are
scalar graph inputs that Python feeds per step, so learning-rate schedules and callbacks change
them without recompiling. Order per step, as Keras: clip the gradients (`clipnorm` per weight,
`global_clipnorm`, `clipvalue`), apply decoupled weight decay `w *= 1 - wd * lr`, then the update:

- SGD: `w -= lr*g`; with momentum `m = momentum*m - lr*g` (lr folded into the velocity), then
  `w += m`, or with nesterov `w += momentum*m - lr*g`.
- Adam: `alpha = lr*sqrt(1 - b2^t)/(1 - b1^t)`, `m = b1*m + (1-b1)*g`, `v = b2*v + (1-b2)*g^2`,
  `w -= alpha*m / (sqrt(v) + eps)`; eps 1e-7 added after the bias correction went into alpha.
  AdamW: Adam with weight_decay 0.004.
- RMSprop: `v = rho*v + (1-rho)*g^2`, `w -= lr*g / sqrt(v + eps)` (eps inside the root; rho 0.9).
- Adagrad: `acc += g^2`, `w -= lr*g / sqrt(acc + eps)`, accumulators start at 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelError
from ..ir.builder import Builder
from ..ir.graph import Value

F32 = np.float32


# Learning-rate schedules -----------------------------------------------------------------------
class LearningRateSchedule:
    """`schedule(step) -> lr`, evaluated in float32 at the optimizer's iteration count."""

    def __call__(self, step: int) -> np.float32:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(vars(self))


class ExponentialDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step: int) -> np.float32:
        p = F32(step) / F32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return F32(F32(self.initial_learning_rate) * np.power(F32(self.decay_rate), p))


class InverseTimeDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.decay_rate, self.staircase = float(decay_rate), bool(staircase)

    def __call__(self, step: int) -> np.float32:
        p = F32(step) / F32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return F32(F32(self.initial_learning_rate) / (F32(1) + F32(self.decay_rate) * p))


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries: list[int], values: list[float]):
        if len(values) != len(boundaries) + 1:
            raise ModelError("PiecewiseConstantDecay needs one more value than boundaries")
        self.boundaries, self.values = list(boundaries), [float(v) for v in values]

    def __call__(self, step: int) -> np.float32:
        for boundary, value in zip(self.boundaries, self.values, strict=False):
            if step <= boundary:
                return F32(value)
        return F32(self.values[-1])


class PolynomialDecay(LearningRateSchedule):
    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
    ):
        self.initial_learning_rate, self.decay_steps = float(initial_learning_rate), int(decay_steps)
        self.end_learning_rate, self.power, self.cycle = float(end_learning_rate), float(power), bool(cycle)

    def __call__(self, step: int) -> np.float32:
        steps = F32(self.decay_steps)
        s = F32(step)
        if self.cycle:
            mult = F32(1) if step == 0 else F32(math.ceil(s / steps))
            steps = steps * mult
        else:
            s = min(s, steps)
        frac = F32(1) - s / steps
        span = F32(self.initial_learning_rate) - F32(self.end_learning_rate)
        return F32(span * np.power(frac, F32(self.power)) + F32(self.end_learning_rate))


class CosineDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        self.initial_learning_rate, self.decay_steps, self.alpha = float(initial_learning_rate), int(decay_steps), alpha

    def __call__(self, step: int) -> np.float32:
        frac = F32(min(step, self.decay_steps)) / F32(self.decay_steps)
        cosine = F32(0.5) * (F32(1) + F32(np.cos(F32(math.pi) * frac)))
        decayed = (F32(1) - F32(self.alpha)) * cosine + F32(self.alpha)
        return F32(F32(self.initial_learning_rate) * decayed)


# Optimizers ------------------------------------------------------------------------------------
Slot = tuple[str, Callable[[tuple[int, ...]], np.ndarray]]


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, np.float32)


class Optimizer:
    default_lr = 0.001

    def __init__(
        self,
        learning_rate: float | LearningRateSchedule | None = None,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        name: str | None = None,
    ) -> None:
        if sum(x is not None for x in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ModelError("set at most one of clipnorm, clipvalue and global_clipnorm")
        self.learning_rate = self.default_lr if learning_rate is None else learning_rate
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        # Slot values per trainable weight name (filled when training starts, synced from the engine).
        self.variables: dict[str, list[np.ndarray]] = {}

    # Python side ---------------------------------------------------------------------------
    @property
    def learning_rate(self) -> Any:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if not isinstance(value, LearningRateSchedule) and not isinstance(value, int | float | np.floating):
            raise ModelError(f"learning_rate must be a number or a schedule, got {value!r}")
        self._learning_rate = value

    def current_learning_rate(self) -> np.float32:
        lr = self._learning_rate
        return lr(self.iterations) if isinstance(lr, LearningRateSchedule) else F32(lr)

    def slots(self) -> list[Slot]:
        return []

    def init_slots(self, name: str, shape: tuple[int, ...]) -> list[np.ndarray]:
        if name not in self.variables:
            self.variables[name] = [init(shape) for _, init in self.slots()]
        return self.variables[name]

    def get_config(self) -> dict[str, Any]:
        lr = self._learning_rate
        return {
            "name": self.name,
            "learning_rate": lr
            if not isinstance(lr, LearningRateSchedule)
            else {"class_name": type(lr).__name__, "config": lr.get_config()},
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
            **self._config(),
        }

    def _config(self) -> dict[str, Any]:
        return {}

    # Graph side ----------------------------------------------------------------------------
    def apply(
        self, b: Builder, weights: list[Value], grads: list[Value], slots: list[list[Value]], lr: Value, t: Value
    ) -> tuple[list[Value], list[list[Value]]]:
        grads = self._clip(b, grads)
        new_w, new_s = [], []
        for w, g, s in zip(weights, grads, slots, strict=True):
            if self.weight_decay:
                decay = b.op("sub", [self._c(b, 1.0), b.op("mul", [self._c(b, self.weight_decay), lr])])
                w = b.op("mul", [w, decay])
            w2, s2 = self.update(b, w, g, s, lr, t)
            new_w.append(w2)
            new_s.append(s2)
        return new_w, new_s

    def update(
        self, b: Builder, w: Value, g: Value, slots: list[Value], lr: Value, t: Value
    ) -> tuple[Value, list[Value]]:
        raise NotImplementedError

    @staticmethod
    def _c(b: Builder, value: float) -> Value:
        return b.constant(np.array(value, np.float32), "float32")

    def _clip(self, b: Builder, grads: list[Value]) -> list[Value]:
        def sumsq(g: Value) -> Value:
            return b.op("reduce_sum", [b.op("mul", [g, g])], axes=tuple(range(g.type.rank)))

        if self.clipnorm and self.clipnorm > 0:
            out = []
            for g in grads:  # Keras' _clip_by_norm: g * c / max(||g||, c)
                norm = b.op("sqrt", [sumsq(g)])
                c = self._c(b, self.clipnorm)
                out.append(b.op("div", [b.op("mul", [g, c]), b.op("maximum", [norm, c])]))
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            total = sumsq(grads[0])
            for g in grads[1:]:
                total = b.op("add", [total, sumsq(g)])
            c = self._c(b, self.global_clipnorm)
            scale = b.op("div", [c, b.op("maximum", [b.op("sqrt", [total]), c])])
            return [b.op("mul", [g, scale]) for g in grads]
        if self.clipvalue and self.clipvalue > 0:
            v = float(self.clipvalue)
            return [b.op("clip", [g], lo=-v, hi=v) for g in grads]
        return grads


class SGD(Optimizer):
    default_lr = 0.01

    def __init__(self, learning_rate: Any = 0.01, momentum: float = 0.0, nesterov: bool = False, **kwargs: Any):
        super().__init__(learning_rate, **kwargs)
        if not 0 <= momentum <= 1:
            raise ModelError(f"SGD momentum must be in [0, 1], got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def slots(self) -> list[Slot]:
        return [("momentum", _zeros)] if self.momentum else []

    def _config(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def update(
        self, b: Builder, w: Value, g: Value, slots: list[Value], lr: Value, t: Value
    ) -> tuple[Value, list[Value]]:
        step = b.op("mul", [g, lr])
        if not self.momentum:
            return b.op("sub", [w, step]), []
        (m,) = slots
        m = b.op("sub", [b.op("mul", [m, self._c(b, self.momentum)]), step])
        if self.nesterov:
            return b.op("add", [b.op("sub", [w, step]), b.op("mul", [m, self._c(b, self.momentum)])]), [m]
        return b.op("add", [w, m]), [m]


class Adam(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = float(beta_1), float(beta_2), float(epsilon), amsgrad

    def slots(self) -> list[Slot]:
        return [("m", _zeros), ("v", _zeros)] + ([("vhat", _zeros)] if self.amsgrad else [])

    def _config(self) -> dict[str, Any]:
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "amsgrad": self.amsgrad}

    def update(
        self, b: Builder, w: Value, g: Value, slots: list[Value], lr: Value, t: Value
    ) -> tuple[Value, list[Value]]:
        c = self._c
        one = c(b, 1.0)
        b1t = b.op("pow", [c(b, self.beta_1), t])
        b2t = b.op("pow", [c(b, self.beta_2), t])
        alpha = b.op("div", [b.op("mul", [lr, b.op("sqrt", [b.op("sub", [one, b2t])])]), b.op("sub", [one, b1t])])
        m, v = slots[0], slots[1]
        m = b.op("add", [b.op("mul", [m, c(b, self.beta_1)]), b.op("mul", [g, c(b, 1 - self.beta_1)])])
        v = b.op(
            "add", [b.op("mul", [v, c(b, self.beta_2)]), b.op("mul", [b.op("mul", [g, g]), c(b, 1 - self.beta_2)])]
        )
        new_slots = [m, v]
        denom_v = v
        if self.amsgrad:
            denom_v = b.op("maximum", [slots[2], v])
            new_slots.append(denom_v)
        step = b.op("div", [b.op("mul", [m, alpha]), b.op("add", [b.op("sqrt", [denom_v]), c(b, self.epsilon)])])
        return b.op("sub", [w, step]), new_slots


class AdamW(Adam):
    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any):
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **kwargs: Any,
    ):
        super().__init__(learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = float(rho), float(momentum), float(epsilon), centered

    def slots(self) -> list[Slot]:
        out: list[Slot] = [("velocity", _zeros)]
        if self.momentum > 0:
            out.append(("momentum", _zeros))
        if self.centered:
            out.append(("average_gradient", _zeros))
        return out

    def _config(self) -> dict[str, Any]:
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}

    def update(
        self, b: Builder, w: Value, g: Value, slots: list[Value], lr: Value, t: Value
    ) -> tuple[Value, list[Value]]:
        c = self._c
        it = iter(slots)
        v = next(it)
        mom = next(it) if self.momentum > 0 else None
        avg = next(it) if self.centered else None
        v = b.op("add", [b.op("mul", [v, c(b, self.rho)]), b.op("mul", [b.op("mul", [g, g]), c(b, 1 - self.rho)])])
        denom = b.op("add", [v, c(b, self.epsilon)])
        new_slots = [v]
        if avg is not None:
            avg = b.op("add", [b.op("mul", [avg, c(b, self.rho)]), b.op("mul", [g, c(b, 1 - self.rho)])])
            denom = b.op("sub", [denom, b.op("mul", [avg, avg])])
        increment = b.op("div", [b.op("mul", [g, lr]), b.op("sqrt", [denom])])
        if mom is not None:
            mom = b.op("add", [b.op("mul", [mom, c(b, self.momentum)]), increment])
            new_slots.append(mom)
            increment = mom
        if avg is not None:
            new_slots.append(avg)
        return b.op("sub", [w, increment]), new_slots


class Adagrad(Optimizer):
    def __init__(
        self, learning_rate: Any = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kwargs: Any
    ):
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)

    def slots(self) -> list[Slot]:
        value = self.initial_accumulator_value
        return [("accumulator", lambda shape: np.full(shape, value, np.float32))]

    def _config(self) -> dict[str, Any]:
        return {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}

    def update(
        self, b: Builder, w: Value, g: Value, slots: list[Value], lr: Value, t: Value
    ) -> tuple[Value, list[Value]]:
        acc = b.op("add", [slots[0], b.op("mul", [g, g])])
        step = b.op("div", [b.op("mul", [g, lr]), b.op("sqrt", [b.op("add", [acc, self._c(b, self.epsilon)])])])
        return b.op("sub", [w, step]), [acc]


_ALIASES: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
}


def get(identifier: Any) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _ALIASES:
        return _ALIASES[identifier.lower()]()
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).lower()
        if name in _ALIASES:
            return from_config(name, identifier.get("config", {}))
    raise ModelError(f"unknown optimizer {identifier!r}; known: {', '.join(sorted(_ALIASES))}")


_SCHEDULES: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay, CosineDecay)
}


# Keras optimizer config keys without an effect at these values (a saved Keras model carries them).
_KERAS_DEFAULTS: dict[str, Any] = {
    "use_ema": False,
    "ema_momentum": None,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "name": None,
}


def from_config(name: str, config: dict[str, Any]) -> Optimizer:
    """An optimizer from its Keras config (`keras.optimizers.Adam().get_config()` or ours)."""
    config = dict(config)
    for key, default in _KERAS_DEFAULTS.items():
        if key not in config:
            continue
        value = config.pop(key)
        if key in ("name", "ema_momentum") or (key == "weight_decay" and value is None):
            continue
        if value != default and not (not config.get("use_ema") and key.startswith("ema_")):
            raise ModelError(
                f"optimizer {name}: {key}={value!r} is not supported; kcompile implements {key}={default!r}"
            )
    if config.get("weight_decay", 0) is None:
        config.pop("weight_decay")
    lr = config.get("learning_rate")
    if isinstance(lr, dict):
        schedule = {k: v for k, v in lr["config"].items() if k != "name"}  # Keras names its schedules
        if lr.get("class_name") not in _SCHEDULES:
            raise ModelError(f"optimizer {name}: learning-rate schedule {lr.get('class_name')!r} is not supported "
                             f"(supported: {', '.join(_SCHEDULES)})")  # fmt: skip
        config["learning_rate"] = _SCHEDULES[lr["class_name"]](**schedule)
    cls = _ALIASES[name.lower()]
    if cls is AdamW:
        config.setdefault("weight_decay", 0.004)
    return cls(**config)
