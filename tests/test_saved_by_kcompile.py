"""Keras 3 loads the `.keras` archives kcompile's `model.save` writes and computes what kcompile
computes, checked without Keras installed.

tests/fixtures/make_saved_by_kcompile_fixtures.py built each model with kcompile, saved it, loaded
the archive with `keras.saving.load_model` (torch backend) and recorded Keras' outputs, what it
loaded into its optimizer and one more Keras `train_on_batch`, together with the archive it read.
Here the same models are built and saved again, and:
- the new archive is the one Keras read (config.json, every h5 group, attribute and dataset), so
  that the recorded Keras results speak for the current writer;
- kcompile's outputs equal Keras' on the same inputs: Keras computed the same function from the file;
- for compiled models, each optimizer variable Keras filled is the slot kcompile meant (by Keras'
  variable path), and training continued from the file is the same step in Keras and in kcompile
  after `kc.load`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any

import numpy as np
import pytest

import kcompile as kc

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
_spec = importlib.util.spec_from_file_location(
    "make_saved_by_kcompile_fixtures", os.path.join(FIXTURES, "make_saved_by_kcompile_fixtures.py")
)
assert _spec is not None and _spec.loader is not None
gen = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gen
_spec.loader.exec_module(gen)

with open(os.path.join(gen.OUT, f"{gen.STEM}.json")) as _f:
    INDEX: dict[str, Any] = json.load(_f)
with np.load(os.path.join(gen.OUT, f"{gen.STEM}.npz")) as _npz:
    DATA: dict[str, np.ndarray] = {k: _npz[k] for k in _npz.files}

RTOL, ATOL = 1e-5, 1e-6
RERUN = (
    "if the change is intended, let Keras check the new files: run the three steps of "
    "tests/fixtures/make_saved_by_kcompile_fixtures.py (see its docstring)"
)
# kcompile's slot names -> Keras' optimizer variable names (`adam/dense_kernel_momentum`).
KERAS_SLOT = {"m": "momentum", "v": "velocity", "vhat": "velocity_hat"}

_SAVED: dict[str, tuple[Any, dict[str, np.ndarray], str]] = {}


def saved(name: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, np.ndarray], str]:
    """The model `name` built as the generator builds it, its arrays, and the archive it saves."""
    if name not in _SAVED:
        model, arrays = gen.build(name)
        path = str(tmp_path_factory.mktemp("saved") / f"{name}.keras")
        model.save(path)
        _SAVED[name] = (model, arrays, path)
    return _SAVED[name]


def test_the_fixture_covers_every_model_and_keras_checked_it() -> None:
    assert INDEX["generator"] == "tests/fixtures/make_saved_by_kcompile_fixtures.py"
    assert INDEX["keras_backend"] == "torch" and INDEX["keras_version"].startswith("3.")
    assert list(INDEX["cases"]) == list(gen.MODELS), f"the fixture lists other models than the generator: {RERUN}"
    cross = INDEX.get("cross_check")
    assert cross is not None and cross["cases_compared"] == len(gen.MODELS), f"the JAX cross-check is missing: {RERUN}"
    assert not cross["disagreements_max_abs"], (
        f"Keras' JAX backend computes something else than torch from {sorted(cross['disagreements_max_abs'])}: "
        "find out which is Keras' semantics before trusting the torch results"
    )
    size = sum(os.path.getsize(os.path.join(gen.OUT, f)) for f in os.listdir(gen.OUT))
    assert size < 1 << 20, f"fixtures of {size} bytes: keep the models small"


@pytest.mark.parametrize("name", list(gen.MODELS))
def test_the_archive_is_the_one_keras_checked(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, arrays, path = saved(name, tmp_path_factory)
    entry = INDEX["cases"][name]
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, DATA[f"{name}/{key}"], err_msg=f"{name}: the inputs changed; {RERUN}")
    config, layout, datasets = gen.archive_contents(path)
    where = first_difference(config, entry["config"])
    assert where is None, f"{name}: config.json differs at {where} from the one Keras loaded; {RERUN}"
    where = first_difference(layout, entry["h5"])
    assert where is None, f"{name}: the h5 layout differs at {where} from the one Keras loaded; {RERUN}"
    for at, value in datasets.items():
        want = DATA[f"{name}/h5:{at}"]
        if name in gen.COMPILED and value.dtype.kind == "f":  # trained by onnxruntime: float sums may differ
            np.testing.assert_allclose(value, want, rtol=RTOL, atol=ATOL, err_msg=f"{name}: h5 {at}; {RERUN}")
        else:  # written from the seeded values as they are
            np.testing.assert_array_equal(value, want, err_msg=f"{name}: h5 {at}; {RERUN}")


def first_difference(got: Any, want: Any, at: str = "") -> str | None:
    """The path of the first place where two parsed JSON values differ, with both sides."""
    if isinstance(got, dict) and isinstance(want, dict):
        if set(got) != set(want):
            here, there = sorted(set(got) - set(want)), sorted(set(want) - set(got))
            return f"{at or '/'}: keys {here} only here, {there} only in the fixture"
        if list(got) != list(want):
            return f"{at or '/'}: keys in the order {list(got)} here, {list(want)} in the fixture"
        for key in got:
            found = first_difference(got[key], want[key], f"{at}/{key}")
            if found:
                return found
        return None
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            found = first_difference(g, w, f"{at}[{i}]")
            if found:
                return found
        return None
    return None if got == want else f"{at}: {got!r} here, {want!r} in the fixture"


@pytest.mark.parametrize("name", list(gen.MODELS))
def test_keras_computes_what_kcompile_computes(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    model, _, _ = saved(name, tmp_path_factory)
    entry = INDEX["cases"][name]
    xs = [DATA[f"{name}/in{i}"] for i in range(len(entry["inputs"]))]
    got = model.predict(xs if len(xs) > 1 else xs[0])
    got = got if isinstance(got, list) else [got]
    assert len(got) == entry["outputs"]
    for k, y in enumerate(got):
        want = DATA[f"{name}/out{k}"]
        assert y.shape == want.shape, f"{name} output {k}: kcompile {y.shape}, Keras {want.shape}"
        np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} output {k}: kcompile vs Keras")


@pytest.mark.parametrize("name", list(gen.COMPILED))
def test_keras_fills_each_optimizer_variable_with_the_slot_kcompile_meant(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Keras assigns `optimizer/vars/<i>` to its i-th optimizer variable: by that variable's path
    (`adam/dense_kernel_momentum`) it must be the slot kcompile wrote at i, with its value."""
    model, _, _ = saved(name, tmp_path_factory)
    opt = model.optimizer
    entry = INDEX["cases"][name]
    keras_vars = entry["keras_optimizer"]
    written = json.loads(entry["h5"]["optimizer/vars"]["attrs"]["kcompile_slots"])
    first, slots = written["first"], written["slots"]
    prefix = keras_vars[0]["path"].rsplit("/", 1)[0]
    assert keras_vars[0]["path"] == f"{prefix}/iteration"
    assert int(DATA[f"{name}/keras_opt0"]) == opt.iterations == gen.COMPILED[name][1]
    if first == 2:
        assert keras_vars[1]["path"] == f"{prefix}/learning_rate"
        np.testing.assert_allclose(DATA[f"{name}/keras_opt1"], opt.current_learning_rate(), rtol=1e-7)
    assert len(keras_vars) == first + len(slots)
    kinds = [n for n, _ in opt.slots()]
    for i, (weight, kind) in enumerate(slots, start=first):
        slot = KERAS_SLOT.get(kinds[kind], kinds[kind])
        assert keras_vars[i]["path"] == f"{prefix}/{weight.replace('/', '_')}_{slot}", (
            f"{name}: the archive's optimizer variable {i} is {weight}'s {kinds[kind]}, Keras reads it as "
            f"{keras_vars[i]['path']}"
        )
        value = opt.variables[weight][kind] if weight in opt.variables else np.zeros(keras_vars[i]["shape"])
        np.testing.assert_allclose(DATA[f"{name}/keras_opt{i}"], value, rtol=RTOL, atol=ATOL)


def check_next_step(name: str, model: Any) -> None:
    """`model.train_on_batch` on the batch Keras trained its loaded model on gives Keras' logs
    and weights."""
    entry = INDEX["cases"][name]
    logs = model.train_on_batch(DATA[f"{name}/train_x"], DATA[f"{name}/train_y"], return_dict=True)
    want_logs = entry["train_on_batch"]
    assert sorted(logs) == sorted(want_logs)
    for key, value in want_logs.items():
        np.testing.assert_allclose(logs[key], value, rtol=RTOL, err_msg=f"{name}: train_on_batch {key}")
    after = model.get_weights()
    assert len(after) == len(entry["keras_weights"])
    for j, (w, spec) in enumerate(zip(after, entry["keras_weights"], strict=True)):
        np.testing.assert_allclose(
            w, DATA[f"{name}/after_w{j}"], rtol=RTOL, atol=ATOL, err_msg=f"{name}: {spec['path']} after the step"
        )


@pytest.mark.parametrize("name", list(gen.COMPILED))
def test_keras_continues_training_from_the_file_as_the_saved_model_does(name: str) -> None:
    model, _ = gen.build(name)  # a fresh copy: the saved one stays as saved for the other tests
    check_next_step(name, model)


@pytest.mark.parametrize("name", gen.COMPILED)
def test_kc_load_continues_training_from_the_file_as_keras_does(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, _, path = saved(name, tmp_path_factory)
    loaded = kc.load(path)
    assert getattr(loaded, "optimizer", None) is not None, f"{name}: kc.load left the model uncompiled"
    assert loaded.optimizer.iterations == gen.COMPILED[name][1]
    check_next_step(name, loaded)
