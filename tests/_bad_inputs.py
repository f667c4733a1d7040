"""What the test_bad_inputs_*.py modules share (issue 17's battery of bad inputs; its map and
conventions: tests/test_bad_inputs.py).

The row builders: ``_case(<the bad call>, <exception type>, <regex>, id)`` is one ``pytest.param``,
``xfail=`` marks a row the library does not answer as it should yet (``_fails``), and ``_all(a, b, ...)``
is a regex that matches when a, b, ... all appear, in any order. The shared objects: small arrays
(``_x``), a layer's init traced abstractly (``_init``) and zeros of its trees (``_zeros``); and the
files and directories the run-directory, data, checkpoint and CLI rows write under ``tmp_path``.
"""
import os

import jax
import numpy as np
import pytest

from _formats import write, write_cifar_bin, write_cifar_py, write_mnist

NAN, INF = float("nan"), float("inf")
KEY = jax.random.PRNGKey(0)


def _all(*parts: str) -> str:
    """A regex that matches when every part (a regex) occurs somewhere, in any order."""
    return "(?s)^" + "".join(f"(?=.*{p})" for p in parts)


def _fails(reason: str):
    """The marker of a row the library does not answer as issue 17 asks yet."""
    return pytest.mark.xfail(strict=True, reason=f"issue 17: {reason}")


def _case(call, exc, pattern, id, xfail=None):
    return pytest.param(call, exc, pattern, id=id, marks=() if xfail is None else _fails(xfail))


# ----------------------------------------------------------------------------- shared objects
def _x(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def _init(layer, in_shape):
    """``layer.init(KEY, in_shape)`` traced abstractly (``jax.eval_shape``): every shape check runs,
    nothing is computed or compiled. Returns ``(out_shape, params, state)`` of ShapeDtypeStructs."""
    box = {}

    def run(key):
        out, params, state = layer.init(key, in_shape)
        box["out"] = out
        return params, state

    params, state = jax.eval_shape(run, KEY)
    return box["out"], params, state


def _zeros(tree):
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)


# ----------------------------------------------------------------------------- files and directories
def _file(d, name="f.txt", text="mine"):
    p = d / name
    p.write_text(text)
    return str(p)


def _foreign_dir(d):
    (d / "proj").mkdir()
    (d / "proj" / "config.json").write_text('{"mine": 1}')
    return str(d / "proj")


def _mnist(n_train=7, n_test=5, edit=None):
    """Standard IDX files of a small dataset in d/mnist, then ``edit(dir)`` damages one."""
    def setup(d):
        where = str(d / "mnist")
        write_mnist(where, n_train=n_train, n_test=n_test, gz=(False, False, False, False))
        if edit is not None:
            edit(where)
        return where
    return setup


def _put(name, payload):
    return lambda where: write(os.path.join(where, name), payload)


def _cifar(folder, writer, edit=None):
    """A setup writing a CIFAR-10 folder (``writer``) under the test's directory, then ``edit(folder)``."""
    def setup(d):
        where = str(d / folder)
        writer(where)
        if edit is not None:
            edit(where)
        return str(d)
    return setup


def _cifar_py(edit=None):
    return _cifar("cifar-10-batches-py", write_cifar_py, edit)


def _cifar_bin(edit=None):
    return _cifar("cifar-10-batches-bin", write_cifar_bin, edit)


def _run_dir(d, config_text):
    (d / "run").mkdir()
    (d / "run" / "config.json").write_text(config_text)
    return str(d / "run")
