"""Every layer against Keras 3 itself: fixtures from tests/fixtures/make_keras_fixtures.py.

For each fixture case (one Keras layer after its Input(s), random weights, Keras' `predict`
output on random inputs), the same layer is built with kcompile twice:
- from Keras' full `get_config()`, mapped to kcompile's constructor (what a `.keras` importer
  does), and run through the NumPy reference interpreter and onnxruntime at every optimisation
  level (-O0 checks the layer's own ops, -O1..-O3 every rewrite on top);
- from only the kwargs the generator passed (what a user writes), run through the reference
  interpreter, so kcompile's defaults must equal Keras' defaults.
All must reproduce Keras' output. This module imports neither keras nor torch.

Regenerate the fixtures with the two commands in make_keras_fixtures.py's docstring.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile.ir import run_graph

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
with open(os.path.join(FIXTURES, "keras_layers.json")) as _f:
    INDEX: dict[str, Any] = json.load(_f)
CASES: dict[str, dict[str, Any]] = INDEX["cases"]

# Float32 everywhere; Keras (torch CPU), NumPy and onnxruntime sum in different orders. With these
# small shapes the worst case (a 3x3x3-channel conv, outputs up to ~12) is within 6 % of this
# bound. A case gets a looser bound only with the float32 reason written next to it.
RTOL, ATOL = 1e-5, 1e-5
LEVELS = (0, 1, 2, 3)
LOOSER: dict[str, tuple[float, float]] = {}

# Where Keras' torch and JAX backends disagree (the generator's --cross-check lists them), which
# one is Keras' semantics. Every disagreement must be listed here (test_fixture_index checks it).
_AVG_SAME = (
    "Keras 3.15.1's torch backend pads uneven 'same' average pooling by edge replication and counts "
    "the padded cells (keras/src/backend/torch/nn.py: _apply_same_padding, mode='replicate'; fixed "
    "upstream by keras-team/keras#23233). Keras' documented semantics, its JAX and TF backends and "
    "kcompile exclude the padding from the count: the JAX output is the oracle here."
)
BACKEND_FOR: dict[str, tuple[str, str]] = {
    name: ("jax", _AVG_SAME)
    for name in (
        "AveragePooling1D_same_p3_s2_uneven_pad",
        "AveragePooling1D_same_p4_s1_uneven_pad",
        "AveragePooling2D_same_p3_s2",
        "AveragePooling2D_same_p2x3_s1x2",
        "AveragePooling3D_same_p3_s2_uneven_pad",
    )
}

# kcompile bugs, each `xfail(strict=True, raises=...)` with its diagnosis: when fixed, the test
# XPASSes and fails, so the entry must be removed. (Conv 'same' with dilation_rate > 1 was one,
# fixed by the dilated same conv lowering in ops/nn.py.)
KNOWN: dict[str, tuple[str, type[BaseException]]] = {}

# Keras config keys that carry no inference numerics for a layer whose weights are set anyway.
DROPPED = {"name", "trainable"}
# Keras config keys kcompile does not take; allowed only with the value that has no effect.
MUST_BE: dict[str, Any] = {
    "kernel_regularizer": None,
    "bias_regularizer": None,
    "activity_regularizer": None,
    "embeddings_regularizer": None,
    "beta_regularizer": None,
    "gamma_regularizer": None,
    "kernel_constraint": None,
    "depthwise_regularizer": None,
    "depthwise_constraint": None,
    "bias_constraint": None,
    "embeddings_constraint": None,
    "beta_constraint": None,
    "gamma_constraint": None,
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": None,
    "mask_zero": False,
    "noise_shape": None,
    "synchronized": False,
    "renorm": False,
    "renorm_clipping": None,
}
# Only meaningful when its switch is on (checked above); ignored otherwise.
IGNORED_WHEN_OFF = {"renorm_momentum": "renorm"}
# Flatten has no data_format in kcompile: only channels_last (Keras' default) keeps NHWC order.
PER_CLASS_MUST_BE: dict[str, dict[str, Any]] = {"Flatten": {"data_format": "channels_last"}}


def kcompile_kwargs(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Map a Keras layer config to kcompile constructor kwargs (same argument names)."""
    out: dict[str, Any] = {}
    must_be = {**MUST_BE, **PER_CLASS_MUST_BE.get(class_name, {})}
    for key, value in config.items():
        if key in DROPPED or key.endswith("_initializer"):
            continue  # initial values do not matter: the test sets every weight
        if key == "dtype":
            policy = value["config"]["name"] if isinstance(value, dict) else value
            assert policy == "float32", f"{class_name}: dtype policy {policy!r} is not mapped"
            continue
        if key in IGNORED_WHEN_OFF and not config.get(IGNORED_WHEN_OFF[key]):
            continue
        if key in must_be:
            assert value == must_be[key], f"{class_name}: config {key}={value!r} is not supported by this test"
            continue
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


_ARRAYS: dict[str, np.ndarray] | None = None


def arrays() -> dict[str, np.ndarray]:
    global _ARRAYS
    if _ARRAYS is None:
        with np.load(os.path.join(FIXTURES, "keras_layers.npz")) as npz:
            _ARRAYS = {k: npz[k] for k in npz.files}
    return _ARRAYS


def build(case: dict[str, Any], kwargs: dict[str, Any]) -> kc.Model:
    inputs = [kc.Input(shape=tuple(i["shape"]), dtype=i["dtype"], name=i["name"]) for i in case["inputs"]]
    layer = getattr(kc.layers, case["class_name"])(**kwargs)
    out = layer(inputs if len(inputs) > 1 else inputs[0])
    return kc.Model(inputs if len(inputs) > 1 else inputs[0], out)


def params() -> list[Any]:
    out = []
    for name in CASES:
        marks = []
        if name in KNOWN:
            reason, raises = KNOWN[name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


def test_fixture_index() -> None:
    assert INDEX["keras_backend"] == "torch"
    assert INDEX["keras_version"].startswith("3.")
    assert set(KNOWN) <= set(CASES) and set(LOOSER) <= set(CASES)
    assert os.path.getsize(os.path.join(FIXTURES, "keras_layers.npz")) < 2 * 1024 * 1024
    data = arrays()
    for name, case in CASES.items():
        assert f"{name}/out" in data
        for j, w in enumerate(case["weights"]):
            assert data[f"{name}/w{j}"].shape == tuple(w["shape"])
    # The backend cross-check ran, and each disagreement has a decision with a reason.
    cross = INDEX.get("cross_check")
    assert cross is not None, "run the generator's --cross-check step (see its docstring)"
    assert cross["cases_compared"] == len(CASES)
    assert set(cross["disagreements_max_abs"]) == set(BACKEND_FOR), (
        "Keras' backends disagree on other cases than BACKEND_FOR lists: decide which is Keras' semantics"
    )


def test_every_layer_has_a_keras_fixture() -> None:
    """A kcompile layer class without a Keras fixture case is a layer whose numerics nobody checked."""
    from kcompile.layers.base import Layer

    public = {n: getattr(kc.layers, n) for n in kc.layers.__all__}
    classes = {n for n, obj in public.items() if isinstance(obj, type) and issubclass(obj, Layer)}
    classes -= {"Layer", "InputLayer"}
    covered = {c["class_name"] for c in CASES.values()}
    missing = sorted(classes - covered)
    assert not missing, f"add Keras fixture cases (tests/fixtures/make_keras_fixtures.py) for: {missing}"


@pytest.mark.parametrize("name", params())
def test_layer_matches_keras(name: str) -> None:
    case = CASES[name]
    data = arrays()
    feeds = {i["name"]: data[f"{name}/in{k}"] for k, i in enumerate(case["inputs"])}
    weights = [data[f"{name}/w{j}"] for j in range(len(case["weights"]))]
    oracle = BACKEND_FOR[name][0] if name in BACKEND_FOR else None
    want = data[f"{name}/out_{oracle}"] if oracle else data[f"{name}/out"]
    rtol, atol = LOOSER.get(name, (RTOL, ATOL))

    def with_weights(model: kc.Model, how: str) -> kc.Model:
        got = [w.shape for w in model.get_weights()]
        assert got == [w.shape for w in weights], f"{how}: weight shapes {got} differ from Keras'"
        model.set_weights(weights)
        return model

    def check(got: Any, how: str) -> None:
        got = np.asarray(got)
        assert got.shape == want.shape, f"{how}: shape {got.shape} != Keras {want.shape}"
        assert got.dtype == want.dtype, f"{how}: dtype {got.dtype} != Keras {want.dtype}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{how} vs Keras")

    from_config = with_weights(build(case, kcompile_kwargs(case["class_name"], case["config"])), "config")
    kc.clear_session()
    user_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in case["kwargs"].items()}
    from_kwargs = with_weights(build(case, user_kwargs), "kwargs")
    # The reference interpreter first, so a case xfailed for an onnxruntime error still checks it.
    check(run_graph(kc.optimize(from_kwargs.to_graph(), level=0), feeds)[0], "kwargs, reference -O0")
    for level in LEVELS:
        check(run_graph(kc.optimize(from_config.to_graph(), level=level), feeds)[0], f"config, reference -O{level}")
    for level in LEVELS:
        check(kc.compile(from_config, level=level)(feeds), f"config, onnxruntime -O{level}")
