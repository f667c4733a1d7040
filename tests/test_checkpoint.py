"""Tests for fcnn.checkpoint: round trips, template checks, corruption, crash safety.

Crash safety is tested twice: by making ``os.replace`` / ``os.fsync`` fail in the
middle of a save, and by SIGKILLing a real subprocess that saves checkpoints in a
loop at random moments; after every kill ``load_latest`` must return a checkpoint
whose values are consistent with its step.
"""
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcnn import __version__, checkpoint
from fcnn.checkpoint import CheckpointError


def make_tree(scale=1.0):
    params = {"conv": {"w": scale * jnp.arange(24, dtype=jnp.float32).reshape(2, 2, 2, 3), "b": jnp.ones(3, jnp.float32)},
              "head": [{"w": jnp.full((4, 2), scale, jnp.bfloat16)}]}
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda a: a + 0.5 if a.dtype != jnp.int32 else a + 3, opt_state)
    return {"params": params, "state": {"bn": {"mean": jnp.zeros(3, jnp.float64)}}, "opt_state": opt_state,
            "key": jax.random.key(42), "raw_key": jax.random.PRNGKey(7), "step": 11, "lr": 0.25}


def assert_trees_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if checkpoint._is_key(x):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_every_leaf_bitwise(tmp_path):
    tree = make_tree()
    path = checkpoint.save(str(tmp_path), 11, tree, metadata={"config": {"lr": 0.25}, "epoch": 2})
    assert os.path.basename(path) == "ckpt_00000011.npz"
    got = checkpoint.restore(path, like=make_tree(scale=0.0))
    assert got.step == 11 and got.metadata == {"config": {"lr": 0.25}, "epoch": 2}
    assert_trees_equal(got.tree, tree)
    assert isinstance(got.tree["opt_state"][0], optax.ScaleByAdamState)
    assert got.tree["step"] == 11 and type(got.tree["step"]) is int and type(got.tree["lr"]) is float
    assert got.tree["params"]["head"][0]["w"].dtype == jnp.bfloat16
    # the restored typed key draws the same numbers
    np.testing.assert_array_equal(jax.random.normal(got.tree["key"], (3,)), jax.random.normal(tree["key"], (3,)))


def test_restore_against_an_abstract_template(tmp_path):
    tree = make_tree()
    path = checkpoint.save(str(tmp_path), 3, tree)
    like = jax.eval_shape(lambda: make_tree())
    assert_trees_equal(checkpoint.restore(path, like=like).tree, tree)


def test_restore_subtrees_reads_some_top_level_entries(tmp_path):
    """params and state alone (what fcnn eval needs), without a template for the optimizer state."""
    tree = make_tree()
    path = checkpoint.save(str(tmp_path), 4, tree)
    like = jax.eval_shape(lambda: {"params": make_tree()["params"], "state": make_tree()["state"]})
    got = checkpoint.restore(path, like=like, subtrees=True)
    assert set(got.tree) == {"params", "state"} and got.step == 4
    assert_trees_equal(got.tree, {"params": tree["params"], "state": tree["state"]})
    wrong = jax.eval_shape(lambda: {"params": make_tree()["opt_state"]})  # a subtree of another shape
    with pytest.raises(CheckpointError, match="different model"):
        checkpoint.restore(path, like=wrong, subtrees=True)
    with pytest.raises(TypeError, match="like must be a dict"):
        checkpoint.restore(path, like=[tree["params"]], subtrees=True)


def test_file_format_is_an_npz_with_a_json_manifest(tmp_path):
    tree = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [np.float32(1.5), jax.random.key(0)]}
    path = checkpoint.save(str(tmp_path), 5, tree, metadata={"x": 1})
    with np.load(path, allow_pickle=False) as z:
        manifest = json.loads(bytes(z["__manifest__"]).decode())
        leaves = [z[f"leaf_{i:05d}"] for i in range(3)]
    assert manifest["format"] == "fcnn-checkpoint" and manifest["step"] == 5
    assert manifest["fcnn_version"] == __version__ and manifest["metadata"] == {"x": 1}
    assert [e["path"] for e in manifest["leaves"]] == ["a", "b/0", "b/1"]
    assert manifest["leaves"][2]["key_impl"] == "threefry2x32" and manifest["leaves"][2]["shape"] == []
    np.testing.assert_array_equal(leaves[0], tree["a"])
    np.testing.assert_array_equal(leaves[2], jax.random.key_data(jax.random.key(0)))
    h = hashlib.sha256(b"".join(a.tobytes() for a in leaves)).hexdigest()
    assert manifest["sha256"] == h
    assert checkpoint.read_manifest(path)["sha256"] == h
    flat = checkpoint.restore(path).tree  # no template: a dict by path
    assert sorted(flat) == ["a", "b/0", "b/1"] and float(flat["b/0"]) == 1.5


def test_keep_prunes_oldest_and_latest_is_numeric(tmp_path):
    for step in (9, 10, 100, 1000):
        checkpoint.save(str(tmp_path), step, {"s": np.int64(step)}, keep=3)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_00000010.npz", "ckpt_00000100.npz", "ckpt_00001000.npz"]
    checkpoint.save(str(tmp_path), 5, {"s": np.int64(5)}, keep=3)  # a rewound run: its save is kept, newer ones untouched
    names = sorted(os.listdir(tmp_path))
    assert names == ["ckpt_00000005.npz", "ckpt_00000010.npz", "ckpt_00000100.npz", "ckpt_00001000.npz"]
    got = checkpoint.load_latest(str(tmp_path), like={"s": np.int64(0)})
    assert got.step == 1000 and int(got.tree["s"]) == 1000
    assert checkpoint.load_latest(str(tmp_path / "empty")) is None and checkpoint.latest(str(tmp_path / "no")) is None


def test_a_resume_past_a_corrupt_newer_checkpoint_keeps_what_it_saves(tmp_path):
    """A run resumed from step 50 because ckpt 100 is corrupt saves step 60 with keep=1: before, the
    corrupt 100 counted as the newest and the new 60 was deleted at once, leaving nothing resumable.
    Now 60 is kept (so is the corrupt 100, still skipped); the run's own save of 100 replaces it."""
    d, tree = str(tmp_path), {"s": np.int64(0)}
    for step in (50, 100):
        checkpoint.save(d, step, {"s": np.int64(step)}, keep=1)
    assert sorted(os.listdir(d)) == ["ckpt_00000100.npz"]
    checkpoint.save(d, 50, {"s": np.int64(50)}, keep=2)
    with open(checkpoint.checkpoint_path(d, 100), "r+b") as f:
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint.*ckpt_00000100"):
        assert checkpoint.load_latest(d, like=tree).step == 50
    checkpoint.save(d, 60, {"s": np.int64(60)}, keep=1)
    assert sorted(os.listdir(d)) == ["ckpt_00000060.npz", "ckpt_00000100.npz"]  # 50 rotated out, 60 kept
    with pytest.warns(RuntimeWarning, match="skipping corrupt"):
        assert int(checkpoint.load_latest(d, like=tree).tree["s"]) == 60
    checkpoint.save(d, 100, {"s": np.int64(100)}, keep=1)  # replaces the corrupt file, then rotates 60 out
    assert sorted(os.listdir(d)) == ["ckpt_00000100.npz"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(checkpoint.load_latest(d, like=tree).tree["s"]) == 100


@pytest.mark.parametrize("edit,message", [
    (lambda t: t["params"]["conv"].update(w=jnp.zeros((3, 2, 2, 3))), "leaf 'params/conv/w' has shape (2, 2, 2, 3), expected (3, 2, 2, 3)"),
    (lambda t: t["params"]["conv"].update(b=jnp.ones(3, jnp.float64)), "leaf 'params/conv/b' has dtype float32, expected float64"),
    (lambda t: t["params"]["head"].append({"w": jnp.ones(2)}), "holds 15 leaves, the template has 16"),
    (lambda t: t.update(key=jax.random.PRNGKey(1)), "leaf 'key' is a typed PRNG key in the checkpoint but is not"),
    (lambda t: t["state"].update(bn={"var": jnp.zeros(3, jnp.float64)}), "leaf 'state/bn/mean' is where the template has 'state/bn/var'"),
])
def test_template_mismatch_names_the_leaf(tmp_path, edit, message):
    path = checkpoint.save(str(tmp_path), 1, make_tree())
    like = make_tree()
    edit(like)
    with pytest.raises(CheckpointError) as e:
        checkpoint.restore(path, like=like)
    assert f"checkpoint {path} is from a different model" in str(e.value) and message in str(e.value), str(e.value)
    with pytest.raises(CheckpointError):  # a template mismatch is never skipped over
        checkpoint.load_latest(str(tmp_path), like=like)


def _rewrite_member(path, name, array):
    """Replace one npz member with a valid zip entry (good CRC) holding ``array``."""
    with np.load(path, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    members[name] = array
    buf = io.BytesIO()
    np.savez(buf, **members)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def test_corruption_is_detected_and_names_the_file(tmp_path):
    d = str(tmp_path)
    tree = {"w": np.arange(1000, dtype=np.float32)}
    p1 = checkpoint.save(d, 1, tree)
    p2 = checkpoint.save(d, 2, tree)
    # a flipped value behind a valid zip CRC: only the sha256 catches it
    _rewrite_member(p2, "leaf_00000", np.arange(1000, dtype=np.float32) + (np.arange(1000) == 500))
    with pytest.raises(CheckpointError, match="checksum mismatch") as e:
        checkpoint.restore(p2, like=tree)
    assert p2 in str(e.value)
    with pytest.warns(RuntimeWarning, match="skipping corrupt checkpoint.*ckpt_00000002"):
        got = checkpoint.load_latest(d, like=tree)
    assert got.step == 1
    # truncation
    with open(p1, "rb") as f:
        raw = f.read()
    with open(p1, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated checkpoint") as e:
        checkpoint.restore(p1)
    assert p1 in str(e.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none verifies: the error names both, no warning comes first
        with pytest.raises(CheckpointError, match="every checkpoint is corrupt") as e:
            checkpoint.latest(d)
    assert p1 in str(e.value) and p2 in str(e.value)
    assert checkpoint.checkpoint_path(d, 2) == p2


def test_flipped_byte_in_the_file(tmp_path):
    path = checkpoint.save(str(tmp_path), 4, {"w": np.ones(4096, np.float32)})
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="ckpt_00000004.npz: (corrupt|checksum)"):
        checkpoint.restore(path)


def test_foreign_npz_is_rejected(tmp_path):
    path = str(tmp_path / "ckpt_00000001.npz")
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="ckpt_00000001.npz: corrupt or truncated checkpoint"):
        checkpoint.restore(path)
    _rewrite_member(path, "__manifest__", np.frombuffer(json.dumps({"format": "other"}).encode(), np.uint8))
    with pytest.raises(CheckpointError, match="not an fcnn checkpoint"):
        checkpoint.restore(path)


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    d = str(tmp_path)
    checkpoint.save(d, 1, {"w": np.full(8, 1.0)})

    def boom(*args):
        raise OSError(f"simulated crash in os.{fail}")

    monkeypatch.setattr(checkpoint.os, fail, boom)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(d, 2, {"w": np.full(8, 2.0)})
    monkeypatch.undo()
    assert os.listdir(d) == ["ckpt_00000001.npz"]  # the temp file was removed, nothing else written
    got = checkpoint.load_latest(d, like={"w": np.zeros(8)})
    assert got.step == 1 and got.tree["w"].tolist() == [1.0] * 8


def test_half_written_temp_file_is_ignored_then_cleaned(tmp_path):
    d = str(tmp_path)
    checkpoint.save(d, 1, {"w": np.full(8, 1.0)})
    tmp = os.path.join(d, ".tmp-ckpt_crashed.npz")
    with open(tmp, "wb") as f:
        f.write(b"PK\x03\x04 half a zip")
    assert checkpoint.latest(d).endswith("ckpt_00000001.npz")
    assert checkpoint.list_checkpoints(d) == [os.path.join(d, "ckpt_00000001.npz")]
    checkpoint.save(d, 2, {"w": np.full(8, 2.0)})
    assert not os.path.exists(tmp)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        checkpoint.save(str(tmp_path), -1, {})
    with pytest.raises(ValueError, match="keep must be a positive int"):
        checkpoint.save(str(tmp_path), 0, {}, keep=0)
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        checkpoint.save(str(tmp_path), 0, {}, metadata={"f": object()})
    with pytest.raises(TypeError, match="object array"):
        checkpoint.save(str(tmp_path), 0, {"x": np.array([None])})
    assert checkpoint.list_checkpoints(str(tmp_path)) == []


SAVER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from fcnn import checkpoint

    run_dir, step = sys.argv[1], int(sys.argv[2])
    while True:
        step += 1
        tree = {"w": np.full((512, 512), step, np.float32), "b": np.full(7, -step, np.int64),
                "key": jax.random.fold_in(jax.random.key(0), step)}
        checkpoint.save(run_dir, step, tree, keep=2, metadata={"step": step})
""")


def test_sigkill_during_saves_never_loses_the_last_checkpoint(tmp_path):
    d = str(tmp_path / "run")
    like = {"w": np.zeros((512, 512), np.float32), "b": np.zeros(7, np.int64), "key": jax.random.key(0)}
    rng = random.Random(0)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    step = 0
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, d, str(step)], env=env)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:  # wait until it has written a new checkpoint
                paths = checkpoint.list_checkpoints(d)
                if paths and int(os.path.basename(paths[-1])[5:13]) > step:
                    break
                assert proc.poll() is None, "the saver subprocess died"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # kill at a random moment of the save loop
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a corrupt checkpoint would warn: there must be none
            got = checkpoint.load_latest(d, like=like)
        assert got is not None and got.step > step
        s = got.step
        assert got.metadata == {"step": s}
        assert np.all(got.tree["w"] == s) and np.all(got.tree["b"] == -s)
        np.testing.assert_array_equal(jax.random.key_data(got.tree["key"]),
                                      jax.random.key_data(jax.random.fold_in(jax.random.key(0), s)))
        assert len(checkpoint.list_checkpoints(d)) <= 3  # keep=2, plus at most one not yet pruned
        step = s


STALLER = textwrap.dedent("""
    import io, os, sys, time
    import numpy as np
    from fcnn import checkpoint

    run_dir, where = sys.argv[1], sys.argv[2]
    checkpoint.save(run_dir, 1, {"w": np.full(100000, 1.0)})

    def stall():
        open(os.path.join(run_dir, "stalled"), "w").close()
        time.sleep(120)

    if where == "mid-write":  # half the zip is in the temp file when the process dies
        real = np.savez
        def half_savez(f, **arrays):
            buf = io.BytesIO()
            real(buf, **arrays)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            stall()
        np.savez = half_savez
    else:  # the temp file is complete and fsynced but not yet renamed
        checkpoint.os.replace = lambda *a: stall()
    checkpoint.save(run_dir, 2, {"w": np.full(100000, 2.0)})
""")


@pytest.mark.parametrize("where", ["mid-write", "before-replace"])
def test_sigkill_at_a_chosen_point_of_a_save(tmp_path, where):
    d = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", STALLER, d, where], env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(d, "stalled")):
            assert proc.poll() is None and time.time() < deadline, "the saver subprocess died or hung"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    tmps = [n for n in os.listdir(d) if n.startswith(".tmp-ckpt_")]
    assert len(tmps) == 1 and os.path.getsize(os.path.join(d, tmps[0])) > 0  # the killed save's leftovers
    assert checkpoint.list_checkpoints(d) == [os.path.join(d, "ckpt_00000001.npz")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no corrupt checkpoint to skip: the old one is simply the newest
        got = checkpoint.load_latest(d, like={"w": np.zeros(100000)})
    assert got.step == 1 and np.all(got.tree["w"] == 1.0)
    checkpoint.save(d, 2, {"w": np.full(100000, 2.0)})  # the next save cleans up
    assert not any(n.startswith(".tmp-ckpt_") for n in os.listdir(d))
    assert checkpoint.load_latest(d, like={"w": np.zeros(100000)}).step == 2
