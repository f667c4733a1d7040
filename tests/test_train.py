"""The fit loop (fcnn.train): bitwise reproducibility, resume, logs, the run directory, retracing."""
import json
import os

import chex
import numpy as np
import pytest

from _tiny import Data, leaves_equal, mlp
from fcnn import data as data_lib
from fcnn.report import read_jsonl
from fcnn.train import EpochSums, TrainConfig, TrainingDivergedError, fit
from fcnn.types import Layer


@pytest.fixture(scope="module")
def data():
    return Data()


def _config(**kw):
    base = dict(model="mlp", dataset="digits8", epochs=3, batch_size=32, optimizer="adam", learning_rate=3e-3,
                schedule="cosine", seed=0, eval_batch_size=64)
    base.update(kw)
    return TrainConfig(**base)


def test_same_seed_same_params_bitwise(data):
    a = fit(mlp(), data, _config(epochs=2), verbose=False)
    b = fit(mlp(), data, _config(epochs=2), verbose=False)
    c = fit(mlp(), data, _config(epochs=2, seed=1), verbose=False)
    assert a.step == 2 * (400 // 32)
    assert leaves_equal(a.params, b.params) and leaves_equal(a.opt_state, b.opt_state)
    assert not leaves_equal(a.params, c.params)
    untimed = lambda h: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in h]
    assert untimed(a.history) == untimed(b.history) and len(a.history) == 2
    assert a.test == b.test


def test_fit_with_steps_per_call_matches_single_steps(data):
    a = fit(mlp(), data, _config(epochs=2), verbose=False)
    b = fit(mlp(), data, _config(epochs=2, steps_per_call=5), verbose=False)  # 12 steps/epoch: 5 + 5 + 1 + 1
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    assert b.test["accuracy"] == pytest.approx(a.test["accuracy"], abs=1 / 150)


def test_nan_input_stops_the_run_naming_the_step(data):
    bad = Data()
    bad.x_train = bad.x_train.copy()
    bad.x_train[123, 4, 4, 0] = np.nan
    order = np.asarray(data_lib.epoch_permutation(0, 0, 400))
    expected = int(np.flatnonzero(order == 123)[0]) // 32 + 1  # steps counted from 1
    assert expected <= 12, "the poisoned example must be in epoch 0's batches for this test"
    with pytest.raises(TrainingDivergedError, match=f"loss became nan at step {expected}$"):
        fit(mlp(), bad, _config(augment_shift=0), verbose=False)
    assert issubclass(TrainingDivergedError, FloatingPointError)


def test_fit_writes_metrics_log_curves_and_config(data, tmp_path, capsys):
    run = str(tmp_path / "run")
    r = fit(mlp(), data, _config(epochs=3), run_dir=run, progress=False)
    lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
    records = [json.loads(line) for line in lines]
    assert [rec["epoch"] for rec in records] == [1, 2, 3]
    assert [rec["step"] for rec in records] == [12, 24, 36]
    for rec in records:
        assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "images_per_s"} <= set(rec)
    assert records[-1]["test_accuracy"] == r.test["accuracy"]
    png = open(os.path.join(run, "curves.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert json.load(open(os.path.join(run, "config.json")))["batch_size"] == 32
    out = capsys.readouterr().out
    assert out.count("epoch ") >= 3 and "test accuracy" in out and f"{r.test['accuracy']:.4f}" in out


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(data, tmp_path):
    cfg = _config(epochs=2, checkpoint_every=5)
    full = fit(mlp(), data, cfg, verbose=False)
    run = str(tmp_path / "run")
    first = fit(mlp(), data, cfg, run_dir=run, max_steps=17, verbose=False)  # stops inside epoch 2
    assert first.step == 17
    rest = fit(mlp(), data, cfg, run_dir=run, resume=True, verbose=False)
    assert rest.step == full.step == 24
    assert leaves_equal(rest.params, full.params) and leaves_equal(rest.opt_state, full.opt_state)
    untimed = lambda h: [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in h]
    assert untimed(rest.history) == untimed(full.history)  # epoch 2's mean spans the interruption
    assert rest.test == full.test


def test_a_used_run_dir_is_not_overwritten(data, tmp_path):
    run = str(tmp_path / "run")
    fit(mlp(), data, _config(epochs=1), run_dir=run, verbose=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(mlp(), data, _config(epochs=1), run_dir=run, verbose=False)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in \['seed'\]"):
        fit(mlp(), data, _config(epochs=2, seed=3), run_dir=run, resume=True, verbose=False)


def _counted(model, n):
    """``model`` whose train-mode apply may be traced at most ``n`` times (``chex.assert_max_traces``)."""
    chex.clear_trace_counter()
    traced_apply = chex.assert_max_traces(lambda p, s, x, key: model.apply(p, s, x, key=key, train=True), n=n)

    def apply(params, state, x, *, key=None, train=False):
        return traced_apply(params, state, x, key) if train else model.apply(params, state, x, key=key, train=False)

    return Layer(model.init, apply)


def test_fit_traces_the_train_step_once_per_shape(data):
    """Three epochs, 36 steps: one trace; k steps per call with a remainder: one more (k and 1)."""
    fit(_counted(mlp(), 1), data, _config(epochs=3), verbose=False)
    fit(_counted(mlp(), 2), data, _config(epochs=2, steps_per_call=5), verbose=False)  # 5 + 5 + 1 + 1 per epoch
    with pytest.raises(AssertionError, match="traced > 1 times"):  # the counter does count: k and 1 are 2 traces
        fit(_counted(mlp(), 1), data, _config(epochs=1, steps_per_call=5), verbose=False)


def test_epoch_sums_add_and_round_trip_through_a_checkpoint():
    """Sums of counts, not means of batch means: 30/32 and 2/8 correct is 32/40, not (0.9375 + 0.25) / 2;
    the checkpoint's JSON keeps them exactly; a list of before tasks (loss, accuracy sum, steps) converts."""
    from fcnn import tasks

    task = tasks.classify()
    step = lambda c, n: {"accuracy": {"correct": np.int32(c), "count": np.int32(n)}}  # noqa: E731
    s = EpochSums().add(2.0, step(30, 32)).add(1.0, step(2, 8))
    assert s.values(task) == (1.5, {"accuracy": 32 / 40}) and EpochSums().values(task) == (None, {})
    back = EpochSums.from_meta(json.loads(json.dumps(s.to_meta())), 32)
    assert back.values(task) == s.values(task) and back.sums["accuracy"]["correct"].dtype == np.int64
    old = EpochSums.from_meta([3.0, 1.5, 2], 32)  # two batches of 32 with accuracies 0.5 and 1.0
    assert old.values(task) == (1.5, {"accuracy": 0.75}) and old.sums["accuracy"]["count"] == 64
    f = EpochSums().add(0.5, {"psnr": {"sq": np.float32(0.1), "count": np.int32(3)}})
    assert EpochSums.from_meta(json.loads(json.dumps(f.to_meta())), 1) == f  # float64 through JSON, exact


def test_a_resumed_run_may_grow_but_never_shrink(data, tmp_path):
    run = str(tmp_path / "run")
    fit(mlp(), data, _config(epochs=2), run_dir=run, verbose=False)
    config_before = open(os.path.join(run, "config.json")).read()
    with pytest.raises(ValueError, match="epochs=1 is fewer than the run's 2"):
        fit(mlp(), data, _config(epochs=1), run_dir=run, resume=True, verbose=False)
    assert open(os.path.join(run, "config.json")).read() == config_before  # nothing rewritten
    longer = fit(mlp(), data, _config(epochs=3), run_dir=run, resume=True, verbose=False)
    assert longer.step == 36 and [r["epoch"] for r in longer.history] == [1, 2, 3]
    # the extension is a line of metrics.jsonl at the step it happened (12 steps an epoch); readers of the
    # per-epoch records (report.read_jsonl, viz.curves) do not see it, a second extension keeps the first
    fit(mlp(), data, _config(epochs=4), run_dir=run, resume=True, verbose=False)
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r.get("epoch", r.get("event")) for r in lines] == [1, 2, "extended", 3, "extended", 4]
    assert lines[2] == {"event": "extended", "step": 24, "from_epochs": 2, "to_epochs": 3}
    assert lines[4] == {"event": "extended", "step": 36, "from_epochs": 3, "to_epochs": 4}
    assert [r["epoch"] for r in read_jsonl(os.path.join(run, "metrics.jsonl"))] == [1, 2, 3, 4]
    again = fit(mlp(), data, _config(epochs=4), run_dir=run, resume=True, verbose=False)  # finished: nothing to do
    assert again.step == 48 and len(open(os.path.join(run, "metrics.jsonl")).read().splitlines()) == 6
    replaced = fit(mlp(), data, _config(epochs=1), run_dir=run, overwrite=True, verbose=False)
    assert replaced.step == 12 and len(open(os.path.join(run, "metrics.jsonl")).read().splitlines()) == 1


@pytest.mark.parametrize("kw,message", [
    (dict(max_steps=-1), "max_steps must be a positive int, got -1"),
    (dict(max_steps=0), "max_steps must be a positive int, got 0"),
    (dict(resume=True), "resume=True needs a run_dir"),
    (dict(resume="no"), "resume must be a bool, got 'no'"),
    (dict(overwrite=1), "overwrite must be a bool, got 1"),
    (dict(run_dir=7), r"run_dir must be a path \(a str\) or None, got 7 \(int\)"),
])
def test_fit_refuses_bad_options_before_training(data, kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fit(mlp(), data, _config(epochs=1), verbose=False, **kw)
    with pytest.raises(TypeError, match=r"^data must have x_train and y_train .*got dict$"):
        fit(mlp(), {"x_train": data.x_train, "y_train": data.y_train}, _config(epochs=1), verbose=False)


def test_a_checkpoint_not_saved_by_fit_is_refused_naming_it(data, tmp_path):
    """checkpoint.save with the right trees but no epoch_sums (a hand-made or converted checkpoint)."""
    from fcnn import checkpoint
    from fcnn.run import checkpoint_tree, init_run, make_run_optimizer

    config, run = _config(epochs=1), str(tmp_path / "run")
    fit(mlp(), data, config, run_dir=run, verbose=False)
    path = checkpoint.latest(run)
    like = checkpoint_tree(*init_run(mlp(), config, (32, 8, 8, 1), make_run_optimizer(config, 12)))
    step, tree, meta = checkpoint.restore(path, like=like)
    del meta["epoch_sums"]
    checkpoint.save(run, step, tree, metadata=meta)
    with pytest.raises(checkpoint.CheckpointError, match=rf"^{path} cannot be resumed: its metadata lacks epoch_sums "
                                                         r"\(not saved by fit\)$"):
        fit(mlp(), data, _config(epochs=2), run_dir=run, resume=True, verbose=False)


def test_fit_checks_the_data_before_training(data):
    def variant(**arrays):
        d = Data()
        for k, v in arrays.items():
            setattr(d, k, v)
        return d

    wrong = data.y_train.copy()
    wrong[7] = 12
    cases = [
        (variant(y_train=wrong), r"y_train holds labels outside \[0, 10\) .*12 at index 7"),
        (variant(y_train=np.concatenate([data.y_train, data.y_train[:3]])), "the images are 400, the labels 403"),
        (variant(y_train=data.y_train[:399]), "the images are 400, the labels 399"),
        (variant(y_test=-data.y_test - 1), r"y_test holds labels outside \[0, 10\)"),
    ]
    for d, message in cases:
        with pytest.raises(ValueError, match=message):
            fit(mlp(), d, _config(epochs=1), verbose=False)
    with pytest.raises(ValueError, match=r"augment_shift=8 must be smaller than the images \(8x8\)"):
        fit(mlp(), data, _config(epochs=1, augment_shift=8), verbose=False)


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing a checkpoint: a clear error, the previous checkpoint loads."""
    import errno

    from fcnn import checkpoint
    from fcnn.run import load_checkpoint, read_config
    from fcnn.train import CheckpointWriteError

    run = str(tmp_path / "run")
    real_savez = np.savez
    calls = {"n": 0}

    def savez_then_full(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint (step 12, the epoch end): half written, then the disk is full
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", savez_then_full)
    with pytest.raises(CheckpointWriteError, match=r"could not save the checkpoint of step 12 .*No space left on "
                                                   r"device.*ckpt_00000010.npz is intact: make room and resume"):
        fit(mlp(), data, _config(epochs=2, checkpoint_every=5), run_dir=run, verbose=False)
    monkeypatch.setattr(checkpoint.np, "savez", real_savez)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(run)] == ["ckpt_00000005.npz", "ckpt_00000010.npz"]
    assert not [n for n in os.listdir(run) if n.startswith(".tmp")]  # the torn temp file is gone
    step, params, _ = load_checkpoint(mlp(), read_config(run), run, data.x_train.shape)
    assert step == 10
    resumed = fit(mlp(), data, _config(epochs=2, checkpoint_every=5), run_dir=run, resume=True, verbose=False)
    full = fit(mlp(), data, _config(epochs=2, checkpoint_every=5), verbose=False)
    assert leaves_equal(resumed.params, full.params)


def test_a_run_directory_that_cannot_be_written_is_refused_before_training(data, tmp_path, monkeypatch):
    import errno

    from fcnn import run as run_lib

    def read_only(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(run_lib.tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=r"run_dir '.*ro' is not writable \(Read-only file system\)"):
        fit(mlp(), data, _config(epochs=1), run_dir=str(tmp_path / "ro"), verbose=False)
    assert os.listdir(tmp_path / "ro") == []  # nothing trained, nothing written


def test_resume_keeps_every_record_it_cannot_read_instead_of_dropping_them(data, tmp_path):
    """metrics.jsonl with a bad line mid-file: the reader stopped there and the resume rewrote the file
    from what it had read, deleting every later epoch in silence. Now the resume is refused naming the
    line, the file untouched; a torn last line (a crash mid-write) is still dropped; a record without
    an integer step is refused by name, not a bare KeyError."""
    run = str(tmp_path / "run")
    fit(mlp(), data, _config(epochs=3), run_dir=run, max_steps=30, verbose=False)
    path = os.path.join(run, "metrics.jsonl")
    lines = open(path).read().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [12, 24]
    for edited, match in (([lines[0], '{"note": "bad line', lines[1]], r"metrics.jsonl: line 2 is not JSON"),
                          ([lines[0], '{"note": "mine"}', lines[1]], r"metrics.jsonl: a record has no integer 'step'")):
        open(path, "w").write("\n".join(edited) + "\n")
        with pytest.raises(ValueError, match=match):
            fit(mlp(), data, _config(epochs=3), run_dir=run, resume=True, verbose=False)
        assert open(path).read() == "\n".join(edited) + "\n"
    open(path, "w").write("\n".join(lines) + '\n{"epoch": 3, "st')  # torn last line: dropped, as before
    assert [r["step"] for r in read_jsonl(path)] == [12, 24]


def test_a_resumed_tensorboard_log_keeps_the_checkpoint_steps_record(data, tmp_path):
    """TensorBoard drops earlier events at steps >= a new file's purge step. The resume purged from the
    checkpoint's own step, losing the epoch record written there, which metrics.jsonl keeps: the purge
    step is now one past it."""
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    from fcnn import tensorboard as tb

    run = str(tmp_path / "run")
    cfg = _config(epochs=2)
    fit(mlp(), data, cfg, run_dir=run, max_steps=12, tensorboard=True, verbose=False)  # checkpoint at 12
    fit(mlp(), data, cfg, run_dir=run, resume=True, tensorboard=True, verbose=False)
    newest = tb._event_files(run)[-1]
    starts = [e.step for e in map(event_pb2.Event.FromString, tb._records(newest))
              if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START]
    assert starts == [13]
