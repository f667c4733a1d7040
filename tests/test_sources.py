"""Tests for fcnn.sources and fit's batch-source path: a source over arrays trains bitwise like the
arrays themselves; a run killed mid-epoch and resumed from a source ends bitwise equal to an
uninterrupted one (steps_per_call too); a source that breaks the contract is named."""
import numpy as np
import pytest

from _tiny import Data, leaves_equal, mlp
from fcnn import sources
from fcnn.train import TrainConfig, fit


@pytest.fixture(scope="module")
def data():
    return Data()


def _config(**kw):
    return TrainConfig(**{**dict(model="mlp", dataset="digits8", epochs=2, batch_size=32, learning_rate=3e-3,
                                 schedule="cosine", eval_batch_size=64), **kw})


def _logged(history):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")} for r in history]


def test_array_source_trains_bitwise_like_the_arrays(data):
    a = fit(mlp(), data, _config(), verbose=False)
    src = sources.array_source(data.x_train, data.y_train, 32)
    b = fit(mlp(), src, _config(), steps_per_epoch=400 // 32, test_data=(data.x_test, data.y_test), verbose=False)
    assert leaves_equal(a.params, b.params) and a.step == b.step == 24
    assert _logged(a.history) == _logged(b.history) and a.test == b.test


class _FileLikeSource:
    """A source that is not arrays in memory: batches made on demand from a seeded generator
    (order from (seed, epoch) alone), counting the batches it produced."""

    def __init__(self, data, batch_size=32, steps=12):
        self.data, self.bs, self.steps, self.made = data, batch_size, steps, 0

    def __call__(self, seed, epoch, start_step):
        order = np.random.default_rng([seed, epoch]).permutation(len(self.data.x_train))
        for b in range(start_step, self.steps):
            self.made += 1
            idx = order[b * self.bs:(b + 1) * self.bs]
            yield self.data.x_train[idx], self.data.y_train[idx]


@pytest.mark.parametrize("k,stop", [(1, 17), (5, 7)])
def test_kill_and_resume_from_a_source_equals_uninterrupted(data, tmp_path, k, stop):
    cfg = _config(epochs=3, steps_per_call=k)
    full = fit(mlp(), _FileLikeSource(data), cfg, steps_per_epoch=12, verbose=False)
    run = str(tmp_path / "run")
    fit(mlp(), _FileLikeSource(data), cfg, steps_per_epoch=12, run_dir=run, max_steps=stop, verbose=False)
    src = _FileLikeSource(data)
    resumed = fit(mlp(), src, cfg, steps_per_epoch=12, run_dir=run, resume=True, verbose=False)
    assert leaves_equal(full.params, resumed.params) and leaves_equal(full.opt_state, resumed.opt_state)
    assert _logged(full.history) == _logged(resumed.history)
    assert src.made == 1 + 36 - stop  # the first batch (shapes) + only the batches not yet trained on


@pytest.mark.parametrize("make,kw,err,match", [
    (lambda d: _FileLikeSource(d), {}, ValueError, "a batch source needs steps_per_epoch"),
    (lambda d: _FileLikeSource(d), dict(steps_per_epoch=13), ValueError, "ran out at batch 12 of epoch 0"),
    (lambda d: _FileLikeSource(d, batch_size=16), dict(steps_per_epoch=12), ValueError,
     "must hold batch_size=32 examples"),
    (lambda d: (lambda s, e, b: iter(())), dict(steps_per_epoch=2), ValueError, "yielded no batch"),
    (lambda d: (lambda s, e, b: iter([d.x_train[:32]])), dict(steps_per_epoch=2), TypeError, r"\(x, y\) pairs"),
    (lambda d: (lambda s, e, b: iter([(d.x_train[:32], d.y_train[:32] + 20)])), dict(steps_per_epoch=2), ValueError,
     r"y_train holds labels outside \[0, 10\)"),
    (lambda d: d, dict(steps_per_epoch=3), ValueError, "steps_per_epoch and test_data are for a batch source"),
])
def test_a_source_that_breaks_the_contract_is_named(data, make, kw, err, match):
    with pytest.raises(err, match=match):
        fit(mlp(), make(data), _config(), verbose=False, **kw)


def test_a_batch_of_another_shape_mid_epoch_is_named(data):
    def source(seed, epoch, start):
        for b in range(start, 4):
            yield data.x_train[:32 if b != 2 else 31], data.y_train[:32 if b != 2 else 31]

    with pytest.raises(ValueError, match="batch 2 of epoch 0 from the batch source has"):
        fit(mlp(), source, _config(), steps_per_epoch=4, verbose=False)


def test_a_label_out_of_range_in_a_later_batch_is_named(data, tmp_path):
    """Only the first batch's labels were checked: labels 10-17 in batch 2 trained as zero one-hot
    rows (no loss, no gradient, counted wrong) without a word. Now batch 2 is refused by name."""
    def source(seed, epoch, start):
        for b in range(start, 4):
            yield data.x_train[:32], data.y_train[:32] + (10 if b == 2 else 0)

    with pytest.raises(ValueError, match=r"y of batch 2 of epoch 0 from the batch source holds labels outside \[0, 10\)"):
        fit(mlp(), source, _config(), steps_per_epoch=4, verbose=False, run_dir=str(tmp_path / "run"))
