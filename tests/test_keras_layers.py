"""Every layer against Keras 3 itself: fixtures from tests/fixtures/make_keras_fixtures.py (and
every other `tests/fixtures/keras_*.json` index with its npz, e.g. the recurrent layers').

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

import glob
import json
import os
from typing import Any

import numpy as np
import pytest

import kcompile as kc
from kcompile.ir import run_graph
from kcompile.keras_import import layer_from_config as import_layer
from kcompile.keras_import import layer_kwargs

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
# Every fixture file: stem (keras_layers, keras_recurrent, ...) -> its index.
INDEXES: dict[str, dict[str, Any]] = {}
for _path in sorted(glob.glob(os.path.join(FIXTURES, "keras_*.json"))):
    with open(_path) as _f:
        INDEXES[os.path.basename(_path)[: -len(".json")]] = json.load(_f)
INDEX: dict[str, Any] = INDEXES["keras_layers"]
CASES: dict[str, dict[str, Any]] = {}
STEM_OF: dict[str, str] = {}  # case -> the fixture file it lives in
for _stem, _index in INDEXES.items():
    for _name, _case in _index["cases"].items():
        assert _name not in CASES, f"case {_name} is in two fixture files"
        CASES[_name], STEM_OF[_name] = _case, _stem

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
BACKEND_FOR["LayerNormalization_rank3_axis1_square"] = (
    "jax",
    "Keras 3.15.1's torch backend sends any contiguous axis set to F.layer_norm "
    "(keras/src/ops/nn.py: _layer_normalization, is_continuous_axis), which normalises the LAST "
    "len(axis) dimensions: axis=1 of a [N, 4, 5] input raises, of a [N, 4, 4] input silently "
    "normalises axis 2. Keras' documented semantics (statistics over `axis`), its JAX backend "
    "(ops.moments over axis 1) and kcompile normalise axis 1: the JAX output is the oracle here.",
)
# Cases another backend cannot run at all (the generator's --cross-check records the error as
# `cross_check_failures`): the torch output is the oracle; each needs the reason.
BACKEND_FAILS: dict[str, str] = {
    "MultiHeadAttention_key_value_dim": (
        "With value_dim != key_dim, Keras 3.15.1's JAX dot_product_attention cannot run: "
        "jax.nn.dot_product_attention wants one head size for query, key and value, and the "
        "fallback (keras/src/backend/jax/nn.py) reshapes the output to the query's shape. Keras' "
        "torch backend and its Softmax path (scores returned, dropout) compute it."
    ),
}

# kcompile bugs, each `xfail(strict=True, raises=...)` with its diagnosis: when fixed, the test
# XPASSes and fails, so the entry must be removed. (Conv 'same' with dilation_rate > 1 was one,
# fixed by the dilated same conv lowering in ops/nn.py.)
KNOWN: dict[str, tuple[str, type[BaseException]]] = {}


def kcompile_kwargs(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Keras' layer config -> kcompile constructor kwargs through the `.keras` importer's own
    mapping (`keras_import.layer_kwargs`), so every fixture case also checks how an archive's config
    becomes a kcompile layer. The name is left out: the test names nothing."""
    kwargs = layer_kwargs(getattr(kc.layers, class_name), class_name, config)
    kwargs.pop("name", None)
    return kwargs


def layer_from_config(entry: dict[str, Any]) -> Any:
    """A layer (or a wrapped Sequential/Functional model) from a Keras `{class_name, config}`."""
    return import_layer(entry)


_ARRAYS: dict[str, dict[str, np.ndarray]] = {}


def arrays(stem: str = "keras_layers") -> dict[str, np.ndarray]:
    if stem not in _ARRAYS:
        with np.load(os.path.join(FIXTURES, f"{stem}.npz")) as npz:
            _ARRAYS[stem] = {k: npz[k] for k in npz.files}
    return _ARRAYS[stem]


def user_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The generator's kwargs as a user writes them (a wrapped layer is {class_name, kwargs})."""
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, dict) and "class_name" in v:
            out[k] = user_layer(v)
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    return out


def user_layer(desc: dict[str, Any]) -> Any:
    """A wrapped layer as a user writes it; a Sequential's kwargs hold `layers`, a Functional's
    `input_shape`, `layers` (a chain) and `name` (make_keras_timedistributed_fixtures.py)."""
    cls, kw = desc["class_name"], desc["kwargs"]
    if cls == "Sequential":
        return kc.Sequential([user_layer(d) for d in kw["layers"]])
    if cls == "Functional":
        x = inp = kc.Input(shape=tuple(kw["input_shape"]))
        for d in kw["layers"]:
            x = user_layer(d)(x)
        return kc.Model(inp, x, name=kw["name"])
    return getattr(kc.layers, cls)(**user_kwargs(kw))


def pre_layer(pre: dict[str, Any], from_config: bool) -> tuple[Any, bool]:
    """A layer applied before the one under test, and whether its mask must be passed by hand
    (never, now that Embedding carries `mask_zero` itself)."""
    kwargs = dict(pre["config"] if from_config else pre["kwargs"])
    mask_zero = kwargs.pop("mask_zero", False)
    kwargs = kcompile_kwargs(pre["class_name"], kwargs) if from_config else user_kwargs(kwargs)
    cls = getattr(kc.layers, pre["class_name"])
    if mask_zero:
        return cls(**kwargs, mask_zero=True), False
    return cls(**kwargs), False


def call_layer(layer: Any, case: dict[str, Any], inputs: list[Any], from_config: bool) -> Any:
    """The generic call convention: pre layers on their `input` (or called with their own `call`,
    the output appended), then `layer(*args, **kwargs, **tensor_kwargs)` with ints naming those
    tensors."""
    xs = list(inputs)

    def pick(ref: Any) -> Any:
        return [pick(r) for r in ref] if isinstance(ref, list) else (None if ref is None else xs[ref])

    def call_with(lay: Any, call: dict[str, Any]) -> Any:
        tensors = {k: pick(v) for k, v in call.get("tensor_kwargs", {}).items()}
        return lay(*[pick(a) for a in call["args"]], **call.get("kwargs", {}), **tensors)

    for pre in case.get("pre", []):
        pl, _ = pre_layer(pre, from_config)
        if "call" in pre:  # a pre layer called like the layer under test: its output is appended
            xs.append(call_with(pl, pre["call"]))
        else:
            xs[pre.get("input", 0)] = pl(xs[pre.get("input", 0)])
    return call_with(layer, case["call"])


def build(case: dict[str, Any], kwargs: dict[str, Any], from_config: bool = True) -> kc.Model:
    inputs = [
        kc.Input(shape=tuple(i["shape"]), dtype=i["dtype"], name=i["name"]) for i in case["inputs"]
    ]  # fmt: skip
    layer = getattr(kc.layers, case["class_name"])(**kwargs)
    if "args" in case.get("call", {}):
        out = call_layer(layer, case, inputs, from_config)
    elif "pre" not in case and "call" not in case:
        out = layer(inputs if len(inputs) > 1 else inputs[0])
    else:
        x, call = inputs[0], dict(case.get("call", {}))
        for pre in case.get("pre", []):
            pl, ids_mask = pre_layer(pre, from_config)
            x = pl(x)
            if ids_mask:
                call["mask"] = 0
        args: dict[str, Any] = {}
        if "initial_state" in call:
            args["initial_state"] = [inputs[i] for i in call["initial_state"]]
        if "mask" in call:
            args["mask"] = inputs[call["mask"]]
        out = layer(x, **args)
    outs = list(out) if isinstance(out, tuple) else out
    return kc.Model(inputs if len(inputs) > 1 else inputs[0], outs)


def params() -> list[Any]:
    out = []
    for name in CASES:
        marks = []
        if name in KNOWN:
            reason, raises = KNOWN[name]
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=reason))
        out.append(pytest.param(name, id=name, marks=marks))
    return out


@pytest.mark.parametrize("stem", sorted(INDEXES))
def test_fixture_index(stem: str) -> None:
    index = INDEXES[stem]
    cases = index["cases"]
    assert index["keras_backend"] == "torch"
    assert index["keras_version"].startswith("3.")
    assert set(KNOWN) <= set(CASES) and set(LOOSER) <= set(CASES)
    assert os.path.getsize(os.path.join(FIXTURES, f"{stem}.npz")) < 2 * 1024 * 1024
    data = arrays(stem)
    for name, case in cases.items():
        assert f"{name}/out" in data
        for j, w in enumerate(case["weights"]):
            assert data[f"{name}/w{j}"].shape == tuple(w["shape"])
    # The backend cross-check ran, and each disagreement has a decision with a reason.
    cross = index.get("cross_check")
    assert cross is not None, "run the generator's --cross-check step (see its docstring)"
    assert cross["cases_compared"] == len(cases)
    assert set(cross["disagreements_max_abs"]) == set(BACKEND_FOR) & set(cases), (
        "Keras' backends disagree on other cases than BACKEND_FOR lists: decide which is Keras' semantics"
    )
    assert set(index.get("cross_check_failures", {})) == set(BACKEND_FAILS) & set(cases), (
        "another Keras backend fails on other cases than BACKEND_FAILS lists: say why"
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
    data = arrays(STEM_OF[name])
    weights = [data[f"{name}/w{j}"] for j in range(len(case["weights"]))]
    oracle = BACKEND_FOR[name][0] if name in BACKEND_FOR else None
    suffix = f"_{oracle}" if oracle else ""
    rtol, atol = LOOSER.get(name, (RTOL, ATOL))
    # Run r > 0 of a case feeds other sizes (a variable time length) to the same model.
    runs = []
    for run in range(case.get("runs", 1)):
        at = name if run == 0 else f"{name}/run{run}"
        feeds = {i["name"]: data[f"{at}/in{k}"] for k, i in enumerate(case["inputs"])}
        wants = [data[f"{at}/out{k if k else ''}{suffix}"] for k in range(case.get("outputs", 1))]
        runs.append((feeds, wants))

    def with_weights(model: kc.Model, how: str) -> kc.Model:
        got = [w.shape for w in model.get_weights()]
        assert got == [w.shape for w in weights], f"{how}: weight shapes {got} differ from Keras'"
        names = [w.name.rsplit("/", 1)[-1] for w in model.weights]  # the last path segment is the weight name
        assert names == [w["name"] for w in case["weights"]], f"{how}: weight names {names} differ from Keras'"
        model.set_weights(weights)
        return model

    def check(gots: Any, wants: list[np.ndarray], how: str) -> None:
        gots = gots if isinstance(gots, list) else [gots]
        assert len(gots) == len(wants), f"{how}: {len(gots)} outputs != Keras {len(wants)}"
        for k, (got, want) in enumerate(zip(gots, wants, strict=True)):
            got, at = np.asarray(got), f"{how}, output {k}" if len(wants) > 1 else how
            assert got.shape == want.shape, f"{at}: shape {got.shape} != Keras {want.shape}"
            assert got.dtype == want.dtype, f"{at}: dtype {got.dtype} != Keras {want.dtype}"
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{at} vs Keras")

    from_config = with_weights(build(case, kcompile_kwargs(case["class_name"], case["config"])), "config")
    kc.clear_session()
    from_kwargs = with_weights(build(case, user_kwargs(case["kwargs"]), from_config=False), "kwargs")
    # The reference interpreter first, so a case xfailed for an onnxruntime error still checks it.
    for feeds, wants in runs:
        check(run_graph(kc.optimize(from_kwargs.to_graph(), level=0), feeds), wants, "kwargs, reference -O0")
    for level in LEVELS:
        graph = kc.optimize(from_config.to_graph(), level=level)
        for feeds, wants in runs:
            check(run_graph(graph, feeds), wants, f"config, reference -O{level}")
    for level in LEVELS:
        compiled = kc.compile(from_config, level=level)
        for r, (feeds, wants) in enumerate(runs):
            check(compiled(feeds), wants, f"config, onnxruntime -O{level}" + (f", run {r}" if r else ""))
