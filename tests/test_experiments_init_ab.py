"""experiments/init_ab.py: its two variants build the same params, and bad arguments are refused."""
import re

import jax
import numpy as np
import pytest

from fcnn import init


def test_both_variants_draw_the_same_params(experiment, monkeypatch):
    """The A/B times equal work: "shaped" (each weight drawn at its shape, the old way) gives the
    library's "flat" params bitwise with XLA's defaults; the suite's LLVM level 0 differs by 1 ulp."""
    ab = experiment("init_ab")
    library = init._flat
    monkeypatch.setattr(init, "_flat", library)  # restored after the "shaped" patch
    model, shape = ab.build("flat", "lenet")
    flat = model.init(jax.random.PRNGKey(0), shape)[1]
    model, shape = ab.build("shaped", "lenet")
    assert init._flat is not library
    shaped = model.init(jax.random.PRNGKey(0), shape)[1]
    for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(shaped)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2.5e-7, atol=1e-8)
    # LeNet-5's parameters by hand: 5*5*1*6+6 + 5*5*6*16+16 + 400*120+120 + 120*84+84 + 84*10+10
    assert sum(np.asarray(a).size for a in jax.tree.leaves(flat)) == 61706


@pytest.mark.parametrize("argv, match", [(["--rounds", "0"], "--rounds must be an integer >= 1, got 0"),
                                         (["--nets", "lenet,alexnet"], r"--nets: unknown \['alexnet'\]")])
def test_bad_arguments_are_refused_before_any_process(experiment, capsys, argv, match):
    ab = experiment("init_ab")
    with pytest.raises(SystemExit):
        ab.main(argv)
    assert re.search(match, capsys.readouterr().err)
