"""fcnn._checks: the one copy of the argument validators (what they accept, what they say)."""
import math

import numpy as np
import pytest

from fcnn import _checks


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(2**40)])
def test_positive_int_accepts_python_and_numpy_ints_and_returns_int(value):
    out = _checks.positive_int(value, "n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, "3", None, np.float32(2)])
def test_positive_int_refuses_with_the_name_and_the_rule(value):
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive int, got {__import__('re').escape(repr(value))}$"):
        _checks.positive_int(value, "batch_size")


def test_hints_and_optional_values():
    with pytest.raises(ValueError, match=r"^augment_shift must be a non-negative int \(pixels\), got -1$"):
        _checks.non_negative_int(-1, "augment_shift", hint="pixels")
    assert _checks.non_negative_int(0, "seed") == 0
    assert _checks.optional_positive_int(None, "devices") is None and _checks.optional_positive_int(2, "d") == 2
    with pytest.raises(ValueError, match=r"^devices must be a positive int or None, got 0$"):
        _checks.optional_positive_int(0, "devices")
    assert _checks.int_in_range(1, "process_id", 0, 2) == 1
    with pytest.raises(ValueError, match=r"process_id must be an int in \[0, 2\), got 2"):
        _checks.int_in_range(2, "process_id", 0, 2)


@pytest.mark.parametrize("check,good,bad", [
    (_checks.positive_float, [1e-9, 3, np.float32(0.5)], [0.0, -1.0, math.inf, math.nan, True, "0.1", None]),
    (_checks.non_negative_float, [0.0, 2, np.float64(1.5)], [-1e-12, math.inf, math.nan, False, "abc"]),
    (_checks.finite_float, [-3.0, 0, 1e300], [math.inf, -math.inf, math.nan, True, [1.0]]),
])
def test_float_checks_refuse_nan_inf_bools_and_strings(check, good, bad):
    for v in good:
        out = check(v, "lr")
        assert out == float(v) and type(out) is float
    for v in bad:
        with pytest.raises(ValueError, match=r"^lr must be a "):
            check(v, "lr")


def test_float_in_range_open_and_closed():
    assert _checks.float_in_range(0.0, "eps", 0.0, 1.0) == 0.0
    with pytest.raises(ValueError, match=r"eps must be a float in \[0.0, 1.0\), got 1.0"):
        _checks.float_in_range(1.0, "eps", 0.0, 1.0)
    assert _checks.float_in_range(1.0, "p", 0.0, 1.0, closed_high=True) == 1.0
    with pytest.raises(ValueError, match=r"p must be a float in \[0.0, 1.0\], got nan"):
        _checks.float_in_range(math.nan, "p", 0.0, 1.0, closed_high=True)


def test_choice_and_boolean():
    assert _checks.choice("bf16", ("f32", "bf16"), "dtype_policy") == "bf16"
    with pytest.raises(ValueError, match=r"^dtype_policy must be one of f32, bf16; got 'fp8'$"):
        _checks.choice("fp8", ("f32", "bf16"), "dtype_policy")
    with pytest.raises(ValueError, match="got 1"):
        _checks.choice(1, ("1", "2"), "x")  # a non-string is never a choice, even if it prints alike
    assert _checks.boolean(False, "flip") is False
    for v in (0, 1, "True", None):
        with pytest.raises(TypeError, match="flip must be a bool"):
            _checks.boolean(v, "flip")


def test_string_and_path_name_the_argument_and_the_rule():
    assert _checks.string("lenet5", "model") == "lenet5" and _checks.string(None, "d", optional=True) is None
    for bad in (3, None, b"lenet5", ["lenet5"]):
        with pytest.raises(TypeError, match=rf"^model must be a str \(a name\), got {__import__('re').escape(repr(bad))}"):
            _checks.string(bad, "model", hint="a name")
    with pytest.raises(TypeError, match=r"^data_dir must be a str or None, got 5 \(int\)$"):
        _checks.string(5, "data_dir", optional=True)
    import pathlib
    assert _checks.path(pathlib.Path("a/b"), "data_dir") == "a/b" and _checks.path("x", "p") == "x"
    assert _checks.path(None, "data_dir", optional=True) is None
    with pytest.raises(TypeError, match=r"^data_dir must be a path \(a str\) or None, got 5 \(int\)$"):
        _checks.path(5, "data_dir", optional=True)
    with pytest.raises(TypeError, match=r"^run_dir must be a path \(a str\), got None"):
        _checks.path(None, "run_dir")
    with pytest.raises(ValueError, match=r"^run_dir must be a non-empty path, got ''$"):
        _checks.path("", "run_dir")


def test_array_shape_of_arrays_tracers_numbers_and_lists_and_refusals():
    import jax
    import jax.numpy as jnp

    assert _checks.array_shape(np.zeros((2, 3)), "x") == (2, 3)
    assert _checks.array_shape(jnp.zeros((4,)), "x") == (4,)
    assert _checks.array_shape(jax.ShapeDtypeStruct((1, 5), jnp.float32), "x") == (1, 5)
    seen = []
    jax.eval_shape(lambda t: seen.append(_checks.array_shape(t, "x")) or t, jnp.zeros((3, 2)))  # a tracer
    assert seen == [(3, 2)]
    assert _checks.array_shape(2.5, "x") == () and _checks.array_shape([[1, 2], [3, 4], [5, 6]], "x") == (3, 2)
    for bad, kind in [(None, "NoneType"), ("img.png", "str"), (True, "bool"), (object, "type")]:
        with pytest.raises(TypeError, match=rf"^w must be an array, got .* \({kind}\)$"):
            _checks.array_shape(bad, "w")


def test_new_file_rules(tmp_path):
    """The path of a file about to be written: a new file in a writable folder; an existing one only
    with overwrite (a bool, checked even where no file exists yet); never a folder."""
    new, old = str(tmp_path / "new.png"), tmp_path / "old.png"
    old.write_text("mine")
    assert _checks.new_file(new, "--out") == new
    assert _checks.new_file(str(old), "--out", overwrite=True) == str(old)
    for value, kw, exc, match in [
        (str(old), {}, ValueError, r"--out '.*old\.png' exists; pass overwrite=True to replace it"),
        (str(old), dict(flag="--overwrite"), ValueError, "pass --overwrite to replace it"),
        (str(tmp_path), {}, ValueError, "is a directory; give the path of a file"),
        (str(tmp_path / "no" / "x.png"), {}, ValueError, r"'.*no' does not exist"),
        (str(old / "x.png"), {}, ValueError, r"'.*old\.png' is not a folder"),
        (new, dict(overwrite="yes"), TypeError, "overwrite must be a bool"),
        ("", {}, ValueError, "--out must be a non-empty path"),
    ]:
        with pytest.raises(exc, match=match):
            _checks.new_file(value, "--out", **kw)
    assert old.read_text() == "mine"


def test_labels_outside_finds_the_first_bad_label_in_c_order():
    """The one label-range rule, on hand-made tables: [0, k) or ignore_index; the first offender in C
    order with its index, and how many break the rule."""
    assert _checks.labels_outside(np.array([0, 2, 1], np.uint8), 3) is None
    assert _checks.labels_outside(np.zeros((0,), np.int32), 3) is None
    assert _checks.labels_outside(np.array([0, 3, -1, 5]), 3) == (3, (1,), 3)
    seg = np.array([[0, 255, 1], [2, -1, 255]])
    assert _checks.labels_outside(seg, 3, ignore_index=255) == (-1, (1, 1), 1)
    assert _checks.labels_outside(seg, 3) == (255, (0, 1), 3)
    assert _checks.labels_outside(seg, 3, ignore_index=-1) == (255, (0, 1), 2)
