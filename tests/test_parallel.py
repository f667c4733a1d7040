"""Tests for fcnn.parallel: data-parallel steps (pmap, sharding, shard_map) and fit's placement.

The multi-device checks need 8 virtual CPU devices, which XLA_FLAGS must request before
JAX initialises, so they run in a subprocess that prints JSON; the parent asserts.
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _children import ROOT, child_env, child_result
from fcnn import parallel
from fcnn.combinators import serial
from fcnn.layers import BatchNorm, Conv2D, Dense, Flatten, Relu

def _bn_model():
    return serial(Conv2D(3, 3, padding="SAME"), BatchNorm(), Relu(), Flatten(), Dense(4))


def test_bad_arguments_name_the_argument():
    model = _bn_model()
    with pytest.raises(ValueError, match="not divisible by n_devices=3"):
        parallel.shard_batch((np.zeros((8, 2)), np.zeros(8)), 3)
    with pytest.raises(ValueError, match=r"^n_devices must be a positive int, got 0$"):
        parallel.shard_batch((np.zeros((8, 2)), np.zeros(8)), 0)
    with pytest.raises(ValueError, match=r"^coordinator must be 'host:port', got 'localhost'$"):
        parallel.initialize_distributed("localhost", 2, 0)
    with pytest.raises(ValueError, match=r"^process_id must be an int in \[0, 2\), got 2$"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match=r"^mesh must be a jax.sharding.Mesh with an axis named 'data'.*got None$"):
        parallel.make_sharded_train_step(model, __import__("optax").sgd(0.1), mesh=None)
    sb = parallel.shard_batch((np.arange(12).reshape(6, 2), np.arange(6)), 3)
    assert sb[0].shape == (3, 2, 2) and sb[1].tolist() == [[0, 1], [2, 3], [4, 5]]


_MULTI_DEVICE = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from fcnn import parallel, tasks
    from fcnn.combinators import serial
    from fcnn.layers import BatchNorm, Conv2D, Dense, Flatten, Relu
    from fcnn.train import make_train_step

    assert jax.device_count() == 8, jax.devices()
    def model(axis_name=None):
        return serial(Conv2D(4, 3, padding="SAME"), BatchNorm(axis_name=axis_name), Relu(), Flatten(), Dense(5))
    N, STEPS = 16, 3
    _, params0, state0 = model().init(jax.random.PRNGKey(0), (1, 6, 6, 2))
    rng = np.random.default_rng(0)
    # shift/scale per example so per-device batch statistics differ from global ones
    xs = [(rng.normal(size=(N, 6, 6, 2)) * np.linspace(0.2, 3, N)[:, None, None, None]
           + np.linspace(-2, 2, N)[:, None, None, None]).astype(np.float32) for _ in range(STEPS)]
    ys = [rng.integers(0, 5, N).astype(np.int32) for _ in range(STEPS)]
    key = jax.random.PRNGKey(1)
    opt = optax.sgd(0.1, momentum=0.9)
    copy = lambda t: jax.tree.map(lambda a: jnp.array(a, copy=True), t)

    def run(step, prep_state=lambda t: t, prep_batch=lambda b: b, post=lambda t: t):
        p, s, o = prep_state(copy(params0)), prep_state(copy(state0)), prep_state(opt.init(copy(params0)))
        losses = []
        for x, y in zip(xs, ys):
            p, s, o, m = step(p, s, o, prep_batch((x, y)), key)
            losses.append(float(np.ravel(m["loss"])[0]))
        return post(p), post(s), losses

    flat = lambda t: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(t)])
    def rel(a, b):
        return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))

    ref_p, ref_s, ref_l = run(make_train_step(model(), opt, donate=False))
    out = {"dtype": str(jax.tree.leaves(ref_p)[0].dtype), "ref_loss": ref_l}
    rep = lambda t: parallel.replicate(t, 8)
    shard = lambda b: parallel.shard_batch(b, 8)
    for name, step, kw in [
        ("pmap", parallel.make_pmap_train_step(model("batch"), opt), dict(prep_state=rep, prep_batch=shard, post=parallel.unreplicate)),
        ("pmap_local_bn", parallel.make_pmap_train_step(model(None), opt), dict(prep_state=rep, prep_batch=shard, post=parallel.unreplicate)),
        ("sharded", parallel.make_sharded_train_step(model(), opt, parallel.make_mesh(8)), {}),
        ("shard_map", parallel.make_shard_map_train_step(model("data"), opt, parallel.make_mesh(8)), {}),
    ]:
        p, s, l = run(step, **kw)
        out[name] = {"params_rel": rel(p, ref_p), "state_rel": rel(s, ref_s), "loss": l,
                     "dtype": str(jax.tree.leaves(p)[0].dtype)}

    # segmentation with an ignore_index: the devices hold different numbers of kept pixels
    seg_task, seg = tasks.segment(3, ignore_index=255), serial(Conv2D(3, 3, padding="SAME"))
    _, sp0, ss0 = seg.init(jax.random.PRNGKey(2), (1, 6, 6, 2))
    sx = rng.normal(size=(N, 6, 6, 2)).astype(np.float32)
    sy = rng.integers(0, 3, (N, 6, 6)).astype(np.int32)
    sy[:2] = 255  # the first device's pixels all ignored
    sy[2:5, :4] = 255
    sopt = optax.sgd(0.5)
    sp_ref, _, _, sm_ref = make_train_step(seg, sopt, task=seg_task, donate=False)(
        copy(sp0), ss0, sopt.init(sp0), (sx, sy), key)
    out["seg"] = {"moved": rel(sp0, sp_ref)}
    for name, step, pre, post in [
        ("pmap", parallel.make_pmap_train_step(seg, sopt, task=seg_task), rep, parallel.unreplicate),
        ("sharded", parallel.make_sharded_train_step(seg, sopt, parallel.make_mesh(8), task=seg_task), None, None),
        ("shard_map", parallel.make_shard_map_train_step(seg, sopt, parallel.make_mesh(8), task=seg_task), None, None),
    ]:
        pre, post = pre or (lambda t: t), post or (lambda t: t)
        batch = shard((sx, sy)) if name == "pmap" else (sx, sy)
        p, _, _, m = step(pre(copy(sp0)), pre(ss0), pre(sopt.init(sp0)), batch, key)
        out["seg"][name] = {"params_rel": rel(post(p), sp_ref), "loss": float(np.ravel(m["loss"])[0])}
    out["seg"]["ref_loss"] = float(sm_ref["loss"])

    errors = {}
    pstep = parallel.make_pmap_train_step(model("batch"), opt)
    try:
        pstep(rep(params0), rep(state0), rep(opt.init(params0)), parallel.shard_batch((xs[0], ys[0]), 4), key)
    except ValueError as e:
        errors["pmap_axis"] = str(e)
    try:
        pstep(params0, rep(state0), rep(opt.init(params0)), shard((xs[0], ys[0])), key)
    except ValueError as e:
        errors["pmap_params"] = str(e)
    sstep = parallel.make_sharded_train_step(model(), opt, parallel.make_mesh(8))
    try:
        sstep(params0, state0, opt.init(params0), (xs[0][:12], ys[0][:12]), key)
    except ValueError as e:
        errors["sharded_div"] = str(e)
    try:
        parallel.make_mesh(9)
    except ValueError as e:
        errors["mesh"] = str(e)
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def multi_device():
    env = child_env(8)
    proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("name", ["pmap", "sharded", "shard_map"])
def test_data_parallel_steps_equal_single_device(multi_device, name):
    r = multi_device[name]
    assert multi_device["dtype"] == "float32" and r["dtype"] == "float32"
    assert r["params_rel"] <= 1e-6, r
    assert r["state_rel"] <= 1e-6, r  # cross-device BatchNorm stats = single-device global-batch stats
    np.testing.assert_allclose(r["loss"], multi_device["ref_loss"], rtol=1e-6)
    assert multi_device["ref_loss"][2] != multi_device["ref_loss"][0]  # params really moved


@pytest.mark.parametrize("name", ["pmap", "sharded", "shard_map"])
def test_data_parallel_segmentation_with_ignored_pixels_equals_single_device(multi_device, name):
    """The loss is a mean over the kept pixels of the global batch; devices holding fewer of them
    (one holds none) weigh less. A plain pmean of per-device means gave another loss and update."""
    r = multi_device["seg"]
    assert r["moved"] > 1e-2  # the step really changed the weights
    assert r[name]["params_rel"] <= 1e-6, r
    np.testing.assert_allclose(r[name]["loss"], r["ref_loss"], rtol=1e-6)


def test_pmap_without_bn_axis_name_uses_local_statistics(multi_device):
    # control: the equality above is due to cross-device statistics, not to a degenerate setup
    assert multi_device["pmap_local_bn"]["state_rel"] > 1e-2
    assert multi_device["pmap_local_bn"]["params_rel"] > 1e-4


def test_data_parallel_bad_configs_give_clear_errors(multi_device):
    e = multi_device["errors"]
    assert "leading device axis of size 8" in e["pmap_axis"] and "batch x" in e["pmap_axis"]
    assert "params must be replicated" in e["pmap_params"]
    assert "batch x global batch size (12,) must be divisible by the 8 devices" in e["sharded_div"]
    assert "n_devices=9 exceeds" in e["mesh"]


_FIT = textwrap.dedent(r"""
    import json, os, sys, tempfile, types
    import jax, numpy as np
    from fcnn import cli
    from fcnn import run as run_lib
    from fcnn.combinators import serial
    from fcnn.layers import BatchNorm, Conv2D, Dense, Flatten, Relu
    from fcnn.train import TrainConfig, fit

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    n = 64
    x = (rng.normal(size=(n, 6, 6, 2)) * np.linspace(0.2, 3, n)[:, None, None, None]).astype(np.float32)
    y = (np.arange(n) % 3).astype(np.int32)
    data = types.SimpleNamespace(x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    flat = lambda t: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(t)])
    rel = lambda a, b: float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b)))

    def model(axis_name=None):
        return serial(Conv2D(4, 3, padding="SAME"), BatchNorm(axis_name=axis_name), Relu(), Flatten(), Dense(3))

    def run(parallel, k=1, shift=0, devices=None, **kw):
        cfg = TrainConfig(epochs=2, batch_size=16, optimizer="momentum", learning_rate=0.05, augment_shift=shift,
                          steps_per_call=k, parallel=parallel, devices=devices)
        r = fit(model("batch" if parallel == "pmap" else None), data, cfg, progress=False, verbose=False, **kw)
        return r

    out, refs = {}, {}
    # the default run: pmap k=1 and sharding k=2, no augmentation, segment under pmap, noisy denoise
    # under sharding, the pmap resume; the slow run adds the other (mode, k) pairs, augmentation,
    # every task and mode, and the command line
    every = os.environ.get("FCNN_FIT_EVERY_TASK") == "1"
    for shift in (0, 1) if every else (0,):
        for k in (1, 2):
            ref = refs[k, shift] = run("none", k, shift)
            # with augmentation only sharding (k 1 and 2) and pmap k=1 are compared below
            modes = ("pmap", "sharding") if (shift, k) != (1, 2) else ("sharding",)
            for mode in modes if every else (("pmap",) if k == 1 else ("sharding",)):
                r = run(mode, k, shift)
                out[f"{mode}_k{k}_shift{shift}"] = {"params": rel(r.params, ref.params), "state": rel(r.state, ref.state),
                                                    "loss": [h["train_loss"] for h in r.history],
                                                    "ref_loss": [h["train_loss"] for h in ref.history]}
    # every task: a fully convolutional net, dense targets; equal under none / pmap / sharding
    from fcnn.dense_data import add_noise
    from fcnn.layers import Conv2D as C
    dense = {"segment": (np.abs(x[..., 0]) > 0.8).astype(np.int32) + (x[..., 1] > 0).astype(np.int32),  # 3 classes
             "denoise": x[..., :1] * 0.5, "regress": x[..., :1] - x[..., 1:]}
    for task, t in dense.items():
        k_out = 3 if task == "segment" else 1
        for noise in ((False, True) if task == "denoise" else (False,)):
            if not every and (task, noise) not in (("segment", False), ("denoise", True)):
                continue
            d_task = types.SimpleNamespace(x_train=x, y_train=t, x_test=x[:16], y_test=t[:16],
                                           augment=add_noise if noise else None)
            got = {}
            modes = ("none", "pmap", "sharding") if not noise else ("none", "sharding")
            for mode in modes if every or noise else ("none", "pmap"):
                cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adam", learning_rate=0.01, augment_shift=0,
                                  parallel=mode, task=task, steps_per_call=2 if mode == "sharding" else 1)
                got[mode] = fit(serial(C(4, 3, padding="SAME"), Relu(), C(k_out, 3, padding="SAME")), d_task, cfg,
                                progress=False, verbose=False)
            for mode, r in got.items():
                out[f"{task}_{mode}_noise{int(noise)}"] = {
                    "params": rel(r.params, got["none"].params), "history": r.history, "test": r.test,
                    "ref_history": got["none"].history, "ref_test": got["none"].test}
    # a pmap run stopped at step 3 and resumed with parallel="none" ends like an uninterrupted run
    d = tempfile.mkdtemp()
    run("pmap", run_dir=d, max_steps=3)
    resumed = run("none", run_dir=d, resume=True)
    out["resume_pmap_to_none"] = rel(resumed.params, refs[1, 0].params)

    # the command line: --parallel sharding --devices 4 vs one device, three steps of LeNet-5 on digits
    def cli_params(*extra):
        d = tempfile.mkdtemp()
        rc = cli.main(["train", "--epochs", "1", "--max-steps", "3", "--batch-size", "32", "--augment-shift", "0",
                       "--no-progress", "--out", d] + list(extra))
        assert rc == 0, rc
        return run_lib.load_run(d).params
    if every:  # three LeNet-5 compiles; fit's equalities are in the default run above
        one = cli_params()
        out["cli_sharding"] = rel(cli_params("--parallel", "sharding", "--devices", "4"), one)
        out["cli_pmap"] = rel(cli_params("--parallel", "pmap", "--devices", "2"), one)
    print("RESULT " + json.dumps(out), flush=True)
""")


def _fit_runs(every_task: bool):
    env = child_env(4, FCNN_FIT_EVERY_TASK=str(int(every_task)))
    proc = subprocess.run([sys.executable, "-c", _FIT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return child_result(proc.stdout)


@pytest.fixture(scope="module")
def fit_runs():
    return _fit_runs(False)


@pytest.fixture(scope="module")
def fit_runs_every_task():
    return _fit_runs(True)


@pytest.mark.parametrize("mode,k", [("pmap", 1), ("sharding", 2)])
def test_fit_parallel_equals_one_device(fit_runs, mode, k):
    _check_fit_run(fit_runs[f"{mode}_k{k}_shift0"])


@pytest.mark.slow
@pytest.mark.parametrize("mode,k", [("pmap", 2), ("sharding", 1)])
def test_fit_parallel_equals_one_device_other_steps_per_call(fit_runs_every_task, mode, k):
    _check_fit_run(fit_runs_every_task[f"{mode}_k{k}_shift0"])


def _check_fit_run(r):
    assert r["params"] <= 1e-6 and r["state"] <= 1e-6, r
    np.testing.assert_allclose(r["loss"], r["ref_loss"], rtol=1e-5)
    assert r["ref_loss"][1] < r["ref_loss"][0]  # it trained


@pytest.mark.parametrize("key", ["segment_pmap_noise0", "denoise_sharding_noise1"])
def test_fit_dense_tasks_parallel_equal_one_device(fit_runs, key):
    """Segmentation under pmap, denoising with its on-device noise under sharding (the default run);
    every task and mode in the slow run, below."""
    _check_task_run(fit_runs[key], key)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["segment_pmap_noise0", "segment_sharding_noise0", "denoise_pmap_noise0",
                                 "denoise_sharding_noise0", "denoise_sharding_noise1", "regress_pmap_noise0",
                                 "regress_sharding_noise0"])
def test_fit_every_task_parallel_equals_one_device(fit_runs_every_task, key):
    _check_task_run(fit_runs_every_task[key], key)


def _check_task_run(r, key):
    """Params, every logged train/test metric (sums psum-ed over devices) and the final test metrics
    equal the one-device run's; sharding draws the same on-device noise as one device."""
    assert r["params"] <= 1e-5, r["params"]
    for got, ref in zip(r["history"], r["ref_history"]):
        assert set(got) == set(ref)
        for name in ref:
            if name not in ("images_per_s", "epoch_seconds"):
                assert got[name] == pytest.approx(ref[name], rel=1e-4, abs=1e-6), name
    assert r["test"] == pytest.approx(r["ref_test"], rel=1e-4)
    assert {"segment": "test_mean_iou", "denoise": "test_psnr", "regress": "test_mae"}[key.split("_")[0]] in r["history"][0]
    assert r["ref_history"][1]["train_loss"] < r["ref_history"][0]["train_loss"]  # it trained


@pytest.mark.slow  # the augmented runs are part of the slow, every-task subprocess
def test_fit_random_augmentation_under_parallel(fit_runs_every_task):
    fit_runs = fit_runs_every_task
    # sharding runs the single-device program on the global batch: same keys, same crops
    for k in (1, 2):
        assert fit_runs[f"sharding_k{k}_shift1"]["params"] <= 1e-6
    # pmap folds the device index into each device's key: other crops, a different (valid) run
    assert fit_runs["pmap_k1_shift1"]["params"] > 1e-4


def test_fit_resumes_a_pmap_checkpoint_on_one_device(fit_runs):
    assert fit_runs["resume_pmap_to_none"] <= 1e-6


@pytest.mark.slow
def test_cli_parallel_flags_reach_fit(fit_runs_every_task):
    assert fit_runs_every_task["cli_sharding"] <= 1e-6


def test_cli_parallel_flags_reach_fits_config(tmp_path, monkeypatch):
    """The default run's check that --parallel and --devices arrive in fit's TrainConfig (one device
    here); the 4-device command-line run that trains with them is in the slow set, above."""
    from fcnn import cli, train

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(model, data, config, **kw):
        seen["config"] = config
        raise Stop  # before any compile

    monkeypatch.setattr(train, "fit", fake_fit)
    with pytest.raises(Stop):
        cli.main(["train", "--epochs", "1", "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "r"),
                  "--parallel", "sharding", "--devices", "1"])
    assert (seen["config"].parallel, seen["config"].devices) == ("sharding", 1)


@pytest.mark.slow
def test_cli_pmap_flag_reaches_fit(fit_runs_every_task):
    assert fit_runs_every_task["cli_pmap"] <= 1e-6


@pytest.mark.parametrize("argv,message", [
    (["--parallel", "ring"], "parallel must be one of none, pmap, sharding; got 'ring'"),
    (["--devices", "2"], "devices=2 needs parallel 'pmap' or 'sharding'"),
    (["--parallel", "sharding", "--devices", "2"], "devices=2 exceeds the 1 available cpu devices"),
    (["--parallel", "pmap", "--devices", "0"], "argument --devices: must be a positive int, got '0'"),
])
def test_cli_parallel_bad_arguments(tmp_path, capsys, argv, message):
    from fcnn import cli

    rc = cli.main(["train", "--epochs", "1", "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "r")] + argv)
    assert rc == 2
    assert message in capsys.readouterr().err
