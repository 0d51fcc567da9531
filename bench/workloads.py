"""The benchmark workloads, written once with kcompile layers, and their peers built with the
same weights: a native PyTorch module (NCHW, as a torch user writes it) and a Keras 3 model.

Every peer is checked against kcompile's output before it is timed, so a ratio is never between
two different computations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import kcompile as kc
from kcompile import layers


def mnist_mlp() -> kc.Model:
    x = kc.Input(shape=(784,), name="x")
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(x))
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(h))
    return kc.Model(x, layers.Dense(10, activation="softmax")(h), name="mnist_mlp")


def small_cnn() -> kc.Model:
    x = kc.Input(shape=(28, 28, 1), name="x")
    h = layers.MaxPooling2D()(layers.Conv2D(32, 3, activation="relu")(x))
    h = layers.MaxPooling2D()(layers.Conv2D(64, 3, activation="relu")(h))
    h = layers.Dropout(0.5)(layers.Dense(128, activation="relu")(layers.Flatten()(h)))
    return kc.Model(x, layers.Dense(10, activation="softmax")(h), name="small_cnn")


# MobileNetV2 exactly as keras.applications.MobileNetV2 builds it (alpha 1.0, include_top).
MOBILENET_BLOCKS = [
    (16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6),
    (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6),
    (320, 1, 6),
]  # fmt: skip


def _bn() -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=1e-3, momentum=0.999)


def mobilenet_v2(size: int = 96, classes: int = 10) -> kc.Model:
    x = kc.Input(shape=(size, size, 3), name="x")
    h = layers.ReLU(6.0)(_bn()(layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)))
    channels, spatial = 32, -(-size // 2)
    for block_id, (filters, stride, expansion) in enumerate(MOBILENET_BLOCKS):
        inputs = h
        if block_id:
            h = layers.ReLU(6.0)(_bn()(layers.Conv2D(expansion * channels, 1, use_bias=False)(h)))
        if stride == 2:
            adjust = 1 - spatial % 2
            h = layers.ZeroPadding2D(((1 - adjust, 1), (1 - adjust, 1)))(h)
        pad = "same" if stride == 1 else "valid"
        h = layers.ReLU(6.0)(_bn()(layers.DepthwiseConv2D(3, strides=stride, padding=pad, use_bias=False)(h)))
        h = _bn()(layers.Conv2D(filters, 1, use_bias=False)(h))
        if channels == filters and stride == 1:
            h = layers.add([inputs, h])
        channels, spatial = filters, -(-spatial // stride)
    h = layers.ReLU(6.0)(_bn()(layers.Conv2D(1280, 1, use_bias=False)(h)))
    h = layers.GlobalAveragePooling2D()(h)
    return kc.Model(x, layers.Dense(classes, activation="softmax")(h), name="mobilenet_v2")


def imdb_lstm(maxlen: int = 80) -> kc.Model:
    """Keras' IMDB sentiment example: Embedding(10000, 128) -> LSTM(128) -> Dense(1, sigmoid).

    The input is float32 token ids, as Keras' example feeds `pad_sequences` output (Embedding
    casts them); draw them with `sample_input`."""
    x = kc.Input(shape=(maxlen,), name="x")
    h = layers.LSTM(128)(layers.Embedding(10000, 128)(x))
    return kc.Model(x, layers.Dense(1, activation="sigmoid")(h), name="imdb_lstm")


def sample_input(model: kc.Model, batch: int, seed: int = 0) -> np.ndarray:
    """A random input batch for `model`: token ids below the vocabulary size when the model starts
    with an Embedding, uniform [0, 1) floats otherwise."""
    rng = np.random.default_rng(seed)
    shape = (batch, *model.inputs[0].shape[1:])
    first = model.layers[1] if len(model.layers) > 1 else None
    if isinstance(first, layers.Embedding):
        return rng.integers(0, first.input_dim, shape).astype(np.float32)
    return rng.random(shape, dtype=np.float32)


def randomize(model: kc.Model, seed: int = 0) -> None:
    """Non-trivial weights (BatchNorm statistics included), so no peer can shortcut anything."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        shape = w.type.shape
        if w.name.endswith("moving_variance"):
            values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif w.name.endswith(("gamma", "moving_mean", "beta")):
            values.append(
                (1.0 if w.name.endswith("gamma") else 0.0) + 0.1 * rng.standard_normal(shape).astype(np.float32)
            )
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            values.append((rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32))
    model.set_weights(values)


WORKLOADS: dict[str, tuple[Callable[[], kc.Model], tuple[int, ...]]] = {
    "mnist_mlp": (mnist_mlp, (1, 256)),
    "small_cnn": (small_cnn, (1, 64)),
    "mobilenet_v2": (mobilenet_v2, (1, 16)),
    "imdb_lstm": (imdb_lstm, (32,)),
}


# PyTorch peers ----------------------------------------------------------------------------------
def torch_module(model: kc.Model) -> Any:
    """A native torch module computing `model` (channels-first, as torch users write it)."""
    import torch
    from torch import nn

    def conv(layer: Any) -> nn.Module:
        w = layer.get_weights()
        kernel = w[0]
        if isinstance(layer, layers.DepthwiseConv2D):
            c, m = kernel.shape[2], kernel.shape[3]
            mod = nn.Conv2d(c, c * m, kernel.shape[:2], stride=layer.strides, groups=c, bias=layer.use_bias)
            mod.weight.data = torch.from_numpy(kernel.transpose(2, 3, 0, 1).reshape(c * m, 1, *kernel.shape[:2]).copy())
        else:
            mod = nn.Conv2d(
                kernel.shape[2], kernel.shape[3], kernel.shape[:2], stride=layer.strides, bias=layer.use_bias
            )
            mod.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        if layer.padding == "same":
            if layer.strides != (1, 1):
                raise NotImplementedError("torch 'same' padding needs stride 1; pad explicitly")
            mod.padding = "same"
        if layer.use_bias:
            mod.bias.data = torch.from_numpy(w[1])
        return mod

    class Net(nn.Module):
        """Replays the kcompile model's layer calls with torch modules (NCHW throughout)."""

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[Any, list[int], int]] = []
            self.mods = nn.ModuleList()
            ids: dict[int, int] = {id(model.inputs[0]): 0}
            for call in model._order:
                layer = call.layer
                mod = self._module(layer)
                self.mods.append(mod)
                self.steps.append((layer, [ids[id(t)] for t in call.inputs], len(self.mods) - 1))
                ids[id(call.outputs[0])] = len(self.steps)
            self.out = ids[id(model.outputs[0])]

        def _module(self, layer: Any) -> nn.Module:
            if isinstance(layer, layers.Conv2D | layers.DepthwiseConv2D):
                first = layer is model.layers[1] and layer.strides == (2, 2) and layer.padding == "same"
                c = conv(layer if not first else _with(layer, padding="valid"))
                act = nn.ReLU() if layer.activation == "relu" else nn.Identity()
                # Keras 'same' at stride 2 on an even input pads (0, 1): spell it out for torch.
                return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), c, act) if first else nn.Sequential(c, act)
            if isinstance(layer, layers.BatchNormalization):
                g, b, m, v = (torch.from_numpy(a) for a in layer.get_weights())
                bn = nn.BatchNorm2d(g.numel(), eps=layer.epsilon)
                bn.weight.data, bn.bias.data, bn.running_mean.data, bn.running_var.data = g, b, m, v
                return bn
            if isinstance(layer, layers.ReLU):
                return nn.ReLU6() if layer.max_value == 6.0 else nn.ReLU()
            if isinstance(layer, layers.ZeroPadding2D):
                (t, bo), (le, r) = layer.padding
                return nn.ZeroPad2d((le, r, t, bo))
            if isinstance(layer, layers.MaxPooling2D):
                return nn.MaxPool2d(layer.pool_size)
            if isinstance(layer, layers.GlobalAveragePooling2D):
                return nn.AdaptiveAvgPool2d(1)
            if isinstance(layer, layers.Flatten):
                return _NhwcFlatten()
            if isinstance(layer, layers.Dense):
                w, b = layer.get_weights()
                lin = nn.Linear(*w.shape)
                lin.weight.data, lin.bias.data = torch.from_numpy(w.T.copy()), torch.from_numpy(b)
                act = {"relu": nn.ReLU(), "softmax": nn.Softmax(-1), "sigmoid": nn.Sigmoid()}.get(
                    layer.activation, nn.Identity()
                )
                return nn.Sequential(nn.Flatten(), lin, act)
            if isinstance(layer, layers.Dropout | layers.Add):
                return nn.Identity()
            if isinstance(layer, layers.Embedding):
                return _TokenEmbedding(torch.from_numpy(layer.get_weights()[0]))
            if isinstance(layer, layers.LSTM):
                return _last_state_lstm(layer)
            raise NotImplementedError(type(layer).__name__)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            values = [x]
            for (layer, ins, _), mod in zip(self.steps, self.mods, strict=True):
                if isinstance(layer, layers.Add):
                    values.append(values[ins[0]] + values[ins[1]])
                else:
                    values.append(mod(values[ins[0]]))
            return values[self.out]

    return Net().eval()


class _TokenEmbedding:
    def __new__(cls, table: Any):  # type: ignore[no-untyped-def]
        import torch

        class Embedding(torch.nn.Module):
            """Keras' Embedding: float token ids are cast to integers."""

            def __init__(self) -> None:
                super().__init__()
                self.embed = torch.nn.Embedding.from_pretrained(table)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.embed(x.long())

        return Embedding()


def _last_state_lstm(layer: Any) -> Any:
    """torch.nn.LSTM with a Keras LSTM's weights (torch's gates [i, f, g, o] are Keras' [i, f, c, o]),
    returning the last hidden state (return_sequences=False, no mask, tanh/sigmoid)."""
    import torch

    if layer.return_sequences or layer.return_state or layer.go_backwards:
        raise NotImplementedError("the torch peer covers a plain LSTM returning its last output")
    if (layer.activation, layer.recurrent_activation) != ("tanh", "sigmoid"):
        raise NotImplementedError("torch.nn.LSTM has only tanh/sigmoid")
    kernel, recurrent, *bias = layer.get_weights()
    lstm = torch.nn.LSTM(kernel.shape[0], layer.units, batch_first=True)
    lstm.weight_ih_l0.data = torch.from_numpy(kernel.T.copy())
    lstm.weight_hh_l0.data = torch.from_numpy(recurrent.T.copy())
    lstm.bias_ih_l0.data = torch.from_numpy(bias[0] if bias else np.zeros(4 * layer.units, np.float32))
    lstm.bias_hh_l0.data = torch.zeros(4 * layer.units)

    class LastState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = lstm

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lstm(x)[1][0][0]  # h_n of the one layer: [batch, units]

    return LastState()


class _NhwcFlatten:
    def __new__(cls):  # type: ignore[no-untyped-def]
        import torch

        class Flatten(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens channels-last

        return Flatten()


def _with(layer: Any, **changes: Any) -> Any:
    import copy

    clone = copy.copy(layer)
    clone.__dict__.update(changes)
    return clone


def to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


# Keras peer -------------------------------------------------------------------------------------
def keras_model(name: str, model: kc.Model) -> Any:
    """The same network in Keras 3 (the torch backend), with kcompile's weights."""
    import keras

    if name == "mobilenet_v2":
        km = keras.applications.MobileNetV2(input_shape=model.inputs[0].shape[1:], alpha=1.0, weights=None, classes=10)
    else:
        km = keras.Sequential([keras.Input(model.inputs[0].shape[1:])] + [_keras_layer(l) for l in model.layers[1:]])
    km.set_weights(model.get_weights())
    return km


def _keras_layer(layer: Any) -> Any:
    import keras

    if isinstance(layer, layers.Dense):
        return keras.layers.Dense(layer.units, activation=layer.activation)
    if isinstance(layer, layers.Conv2D):
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, activation=layer.activation)
    if isinstance(layer, layers.MaxPooling2D):
        return keras.layers.MaxPooling2D(layer.pool_size)
    if isinstance(layer, layers.Flatten):
        return keras.layers.Flatten()
    if isinstance(layer, layers.Dropout):
        return keras.layers.Dropout(layer.rate)
    if isinstance(layer, layers.Embedding):
        return keras.layers.Embedding(layer.input_dim, layer.output_dim)
    if isinstance(layer, layers.LSTM):
        return keras.layers.LSTM(
            layer.units,
            activation=layer.activation,
            recurrent_activation=layer.recurrent_activation,
            use_bias=layer.use_bias,
            return_sequences=layer.return_sequences,
            go_backwards=layer.go_backwards,
        )
    raise NotImplementedError(type(layer).__name__)
