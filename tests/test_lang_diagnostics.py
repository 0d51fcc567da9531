"""One test per `.k` diagnostic the language promises: message, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcompile.errors import KCompileError, ShapeError
from kcompile.lang import load_program

CNN = """\
model cnn {
    img = Input(shape=(8,))
    x = Dense(4, name="digits")(img)
    aux = Dense(1, name="aux")(x)
    return x, aux
}
"""


def error(tmp_path: Path, source: str, name: str = "m.k", **others: str) -> KCompileError:
    """Load `source` (written as `name`, beside the files in `others`) and return its error."""
    for other, text in others.items():
        (tmp_path / other.replace("__", ".")).write_text(text)
    path = tmp_path / name
    path.write_text(source)
    with pytest.raises(KCompileError) as info:
        load_program(str(path))
    err = info.value
    assert err.loc is not None and err.loc.line >= 1 and err.loc.col >= 1
    return err


def at(err: KCompileError) -> tuple[str, int, int]:
    assert err.loc is not None
    return Path(err.loc.file).name, err.loc.line, err.loc.col


# Syntax ------------------------------------------------------------------------------------
def test_syntax_error_says_what_was_expected(tmp_path: Path) -> None:
    src = 'model m {\n    x = Input(shape=(4,))\n    y = Dense(10 activation="relu")(x)\n    return y\n}\n'
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 3, 18)
    assert err.message == (
        "unexpected name 'activation'; expected an operator, ',' or ')' (separate arguments with ',')"
    )
    text = str(err)
    assert text.startswith(f"{tmp_path / 'm.k'}:3:18: unexpected name 'activation'")
    assert text.endswith('    y = Dense(10 activation="relu")(x)\n                     ^')


def test_syntax_error_at_end_of_file_names_the_open_block(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return x\n")
    assert at(err) == ("m.k", 3, 13)
    assert "unexpected end of file" in err.message and "'{' at line 1 is not closed" in err.message


def test_syntax_error_for_a_character_outside_the_language(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,)) @ 2\n}\n")
    assert at(err) == ("m.k", 2, 27)
    assert err.message == "unexpected character '@'"


def test_syntax_error_for_python_style_blocks(tmp_path: Path) -> None:
    err = error(tmp_path, "model m:\n    x = 1\n")
    assert at(err) == ("m.k", 1, 8)
    assert "blocks are written in braces" in err.message


def test_statements_after_return_are_reported(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return x\n    y = x\n}\n")
    assert at(err) == ("m.k", 4, 5)
    assert "follows a 'return'" in err.message


# Names and layers --------------------------------------------------------------------------
def test_unknown_layer_suggests_the_closest_names(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return Dens(3)(x)\n}\n")
    assert at(err) == ("m.k", 3, 12)
    assert err.message == "unknown layer 'Dens'; did you mean 'Dense'?"


def test_unknown_layer_without_a_close_name_lists_the_layers(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return Qwertz(3)(x)\n}\n")
    assert at(err) == ("m.k", 3, 12)
    assert err.message.startswith("unknown layer 'Qwertz'; the layers are: ")
    assert "Conv2D" in err.message and "Dense" in err.message


def test_undefined_name(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    img = Input(shape=(4,))\n    return Dense(3)(imgs)\n}\n")
    assert at(err) == ("m.k", 3, 21)
    assert err.message == "undefined name 'imgs'; did you mean 'img'?"


def test_unknown_argument_lists_the_valid_ones(tmp_path: Path) -> None:
    err = error(tmp_path, 'model m {\n    x = Input(shape=(4,))\n    return Dense(3, activaton="relu")(x)\n}\n')
    assert at(err) == ("m.k", 3, 21)
    assert err.message.startswith("Dense has no argument 'activaton' (did you mean 'activation'?); its arguments are: ")
    assert "units, activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer" in err.message
    assert "name, trainable" in err.message


def test_missing_argument_shows_the_signature(tmp_path: Path) -> None:
    err = error(tmp_path, 'model m {\n    x = Input(shape=(4,))\n    return Dense(activation="relu")(x)\n}\n')
    assert at(err) == ("m.k", 3, 12)
    assert err.message.startswith("Dense is missing argument 'units'; it takes Dense(units, activation=None, ")


def test_too_many_positional_arguments(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return Dropout(0.5, None, 1, 2)(x)\n}\n")
    assert at(err) == ("m.k", 3, 34)
    assert err.message.startswith(
        "Dropout takes 3 positional arguments (rate, noise_shape, seed); pass the others by name"
    )


def test_wrong_argument_type(tmp_path: Path) -> None:
    err = error(tmp_path, 'model m {\n    x = Input(shape=(4,))\n    return Dense("ten")(x)\n}\n')
    assert at(err) == ("m.k", 3, 18)
    assert err.message == "Dense argument 'units' must be an int, got the string \"ten\""


def test_wrong_argument_type_in_a_tuple(tmp_path: Path) -> None:
    err = error(tmp_path, 'model m {\n    x = Input(shape=(4, "5"))\n    return x\n}\n')
    assert at(err) == ("m.k", 2, 21)
    assert "Input argument 'shape' must be a tuple or list of ints/None or None" in err.message


def test_layer_errors_point_at_the_argument_they_name(tmp_path: Path) -> None:
    err = error(tmp_path, 'model m {\n    x = Input(shape=(4,))\n    return Dense(3, activation="rleu")(x)\n}\n')
    assert at(err) == ("m.k", 3, 32)
    assert err.message == "unknown activation 'rleu'; did you mean 'relu'?"


def test_errors_in_a_def_say_where_it_was_called(tmp_path: Path) -> None:
    src = (
        'def block(x) {\n    return Dense(2, activation="nope")(x)\n}\n'
        "model m {\n    x = Input(shape=(4,))\n    return block(x)\n}\n"
    )
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 2, 32)
    assert err.message.endswith(f"(in def 'block', called at {tmp_path / 'm.k'}:6:12)")


# Shapes and values -------------------------------------------------------------------------
def test_shape_mismatch_gives_both_shapes_and_their_origins(tmp_path: Path) -> None:
    src = (
        "model m {\n    a = Input(shape=(4,))\n    b = Input(shape=(5,))\n    d = Dense(3)\n"
        "    y = d(a)\n    z = d(b)\n    return z\n}\n"
    )
    err = error(tmp_path, src)
    assert isinstance(err, ShapeError)
    assert at(err) == ("m.k", 6, 9)
    m = tmp_path / "m.k"
    assert "got float32[None, 5]" in err.message and f"from Input 'input_layer_1' at {m}:3:9" in err.message
    assert f"was built by its first call, at {m}:5:9, on float32[None, 4] from Input 'input_layer' at {m}:2:9" in (
        err.message
    )


def test_shape_mismatch_of_a_merge(tmp_path: Path) -> None:
    src = "model m {\n    a = Input(shape=(4,))\n    b = Input(shape=(5, 2))\n    return concatenate([a, b])\n}\n"
    err = error(tmp_path, src)
    assert isinstance(err, ShapeError) and at(err) == ("m.k", 4, 12)
    assert "float32[None, 4] from Input 'input_layer' at" in err.message
    assert "float32[None, 5, 2] from Input 'input_layer_1' at" in err.message


def test_shape_mismatch_in_a_sequential_points_at_the_layer(tmp_path: Path) -> None:
    err = error(tmp_path, "sequential s {\n    Input(shape=(4,))\n    Dense(3)\n    Conv2D(3, 3)\n}\n")
    assert isinstance(err, ShapeError) and at(err) == ("m.k", 4, 5)
    assert err.message.startswith("Conv2D layer 'conv2d': expects a rank-4 input")


def test_wrong_number_of_returned_values(tmp_path: Path) -> None:
    src = CNN + "model top {\n    img = Input(shape=(8,))\n    a, b, c = cnn(img)\n    return a\n}\n"
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 9, 15)
    assert err.message == "this gives 2 values, but 3 names (a, b, c) are waiting for them"


def test_unpacking_a_single_tensor(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    a, b = Dense(2)(x)\n    return a\n}\n")
    assert at(err) == ("m.k", 3, 12)
    assert err.message.startswith("cannot unpack a tensor float32[None, 2]")


def test_model_that_returns_nothing(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n}\n")
    assert at(err) == ("m.k", 1, 7)
    assert err.message == "model 'm' returns nothing; end it with 'return' and its output(s)"


def test_model_that_returns_a_layer(tmp_path: Path) -> None:
    err = error(tmp_path, "model m {\n    x = Input(shape=(4,))\n    return Dense(2)\n}\n")
    assert at(err) == ("m.k", 3, 12)
    assert "must return tensors, got layer 'dense' (Dense); call it on a tensor" in err.message


# Weights -----------------------------------------------------------------------------------
def test_duplicate_layer_and_weight_names(tmp_path: Path) -> None:
    src = (
        'model m {\n    x = Input(shape=(4,))\n    y = Dense(3, name="proj")(x)\n'
        '    return Dense(3, name="proj")(y)\n}\n'
    )
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 4, 12)
    assert err.message.startswith("two layers of model 'm' are named 'proj' (the other is made at line 3)")
    assert "'proj/kernel'" in err.message


def test_duplicate_weight_names_through_a_nested_model(tmp_path: Path) -> None:
    src = (
        'model inner {\n    x = Input(shape=(4,))\n    return Dense(4, name="proj")(x)\n}\n'
        'model outer {\n    x = Input(shape=(4,))\n    y = inner(x)\n    return Dense(2, name="proj")(y)\n}\n'
    )
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 8, 12)
    assert err.message.startswith("two weights of model 'outer' are named 'proj/kernel'")


def test_frozen_needs_a_bool(tmp_path: Path) -> None:
    err = error(
        tmp_path, CNN + "model top {\n    img = Input(shape=(8,))\n    cnn.trainable = 0\n    return cnn(img)\n}\n"
    )
    assert at(err) == ("m.k", 9, 21)
    assert err.message == "trainable takes True or False, got the number 0"


# Imports -----------------------------------------------------------------------------------
def test_import_not_found(tmp_path: Path) -> None:
    err = error(tmp_path, 'import "clasifier.k"\n', classifier__k="sequential c {\n    Dense(2)\n}\n")
    assert at(err) == ("m.k", 1, 8)
    assert err.message.startswith('cannot import "clasifier.k": there is no file')
    assert err.message.endswith("did you mean 'classifier.k'?")


def test_import_cycle(tmp_path: Path) -> None:
    err = error(tmp_path, 'import "b.k"\n', b__k='import "c.k"\n', c__k='\nimport "m.k"\n')
    assert at(err) == ("c.k", 2, 8)
    m, b, c = (str(tmp_path / f) for f in ("m.k", "b.k", "c.k"))
    assert err.message.startswith(f"import cycle: {m} imports {b} imports {c} imports {m}")


def test_errors_in_imported_files_point_into_them(tmp_path: Path) -> None:
    err = error(
        tmp_path, '\nimport "lib.k"\n', lib__k="model lib {\n    x = Input(shape=(4,))\n    return Dens(1)(x)\n}\n"
    )
    assert at(err) == ("lib.k", 3, 12)
    assert err.message.endswith(f"(imported from {tmp_path / 'm.k'}:2:8)")


def test_imported_names_may_not_clash(tmp_path: Path) -> None:
    lib = "model c {\n    x = Input(shape=(4,))\n    return x\n}\n"
    err = error(tmp_path, lib + 'import "lib.k"\n', lib__k=lib)
    assert at(err) == ("m.k", 5, 8)
    assert "brings 'c'" in err.message and "is already defined" in err.message


def test_a_model_defined_later_must_come_first(tmp_path: Path) -> None:
    src = (
        "model a {\n    x = Input(shape=(4,))\n    return b(x)\n}\n"
        "model b {\n    x = Input(shape=(4,))\n    return x\n}\n"
    )
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 3, 12)
    assert err.message.startswith("'b' is defined further down")


# Devices, scopes, training -----------------------------------------------------------------
def test_unknown_device(tmp_path: Path) -> None:
    src = 'model m {\n    x = Input(shape=(4,))\n    with device("tpx:0") { y = Dense(3)(x) }\n    return y\n}\n'
    err = error(tmp_path, src)
    assert at(err) == ("m.k", 3, 17)
    assert err.message.startswith("unknown device 'tpx:0'")


def test_train_block_checks_its_settings(tmp_path: Path) -> None:
    base = "model m {\n    x = Input(shape=(4,))\n    return x\n}\n"
    err = error(tmp_path, base + 'train m {\n    optimizer = Adamm(learning_rate=0.1)\n    loss = "mse"\n}\n')
    assert at(err) == ("m.k", 6, 17)
    assert err.message.startswith("unknown optimizer 'Adamm' (did you mean 'Adam'?)")
    err = error(tmp_path, base + 'train m {\n    optimizer = SGD(learning_rat=0.1)\n    loss = "mse"\n}\n')
    assert at(err) == ("m.k", 6, 21)
    assert "SGD has no argument 'learning_rat' (did you mean 'learning_rate'?)" in err.message
    err = error(tmp_path, base + 'train m {\n    loss = "mse"\n    epochs = 0\n}\n')
    assert at(err) == ("m.k", 7, 14) and err.message == "epochs must be a positive integer, got 0"
    err = error(tmp_path, base + 'train mm {\n    loss = "mse"\n}\n')
    assert at(err) == ("m.k", 5, 7) and err.message == "train block: there is no model 'mm'; did you mean 'm'?"
