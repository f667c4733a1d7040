"""A run's definition and directory (fcnn.run): TrainConfig, config.json, keys, load_checkpoint."""
import json
import os
import re
import warnings

import chex
import jax
import pytest

from _tiny import Data, leaves_equal, mlp
from fcnn import run
from fcnn.train import fit


def _config(**kw):
    base = dict(model="mlp", dataset="digits8", epochs=1, batch_size=32, seed=3, eval_batch_size=64)
    base.update(kw)
    return run.TrainConfig(**base)


@pytest.mark.parametrize("kw,message", [
    (dict(l2="abc"), "l2 must be a non-negative float, got 'abc'"),
    (dict(l2=float("inf")), "l2 must be a non-negative float, got inf"),
    (dict(learning_rate=float("inf")), "learning_rate must be a positive float, got inf"),
    (dict(momentum=float("nan")), r"momentum must be a float in \[0, 1\), got nan"),
    (dict(optimizer="adamw", weight_decay=float("inf")), "weight_decay must be a non-negative float, got inf"),
    (dict(epochs=True), "epochs must be a positive int, got True"),
    (dict(seed=-1), r"seed must be an int in \[0, 4294967296\), got -1"),
    (dict(augment_shift=-2), r"augment_shift must be a non-negative int \(pixels\), got -2"),
    (dict(checkpoint_every=0), r"checkpoint_every must be a positive int \(steps\) or None, got 0"),
    (dict(label_smoothing=1.0), r"label_smoothing must be a float in \[0.0, 1.0\), got 1.0"),
    (dict(dtype_policy="fp8"), "dtype_policy must be one of f32, bf16; got 'fp8'"),
    (dict(parallel="ring"), "parallel must be one of none, pmap, sharding; got 'ring'"),
    (dict(devices=2), "devices=2 needs parallel 'pmap' or 'sharding'"),
    (dict(parallel="pmap", devices=0), r"devices must be a positive int \(all devices\) or None, got 0"),
])
def test_train_config_names_the_field_and_the_rule(kw, message):
    with pytest.raises(ValueError, match=message):
        _config(**kw)


def test_from_dict_reads_the_old_precision_field_and_refuses_unknown_ones():
    old = dict(_config().to_dict(), dtype_policy=None)
    del old["dtype_policy"]
    old["precision"] = "bf16"
    with pytest.warns(DeprecationWarning, match="'precision' is now 'dtype_policy'"):
        cfg = run.TrainConfig.from_dict(old)
    assert cfg.dtype_policy == "bf16" and cfg == _config(dtype_policy="bf16")
    with pytest.raises(ValueError, match=r"unknown fields \['lr'\]"):
        run.TrainConfig.from_dict(dict(_config().to_dict(), lr=0.1))


def test_config_json_round_trips_and_a_damaged_one_is_named(tmp_path):
    cfg = _config(dtype_policy="bf16", checkpoint_every=7)
    run.write_config(str(tmp_path), cfg)
    on_disk = json.load(open(tmp_path / "config.json"))
    assert on_disk["fcnn_version"] and on_disk["checkpoint_every"] == 7
    assert run.read_config(str(tmp_path)) == cfg
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text[: len(text) // 2])  # cut in half
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        run.read_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        run.read_config(str(tmp_path / "nowhere"))


def test_split_seed_is_the_key_split_fit_draws_its_init_from():
    """Independent reference: the first half of ``split(PRNGKey(seed))`` initialises the params."""
    model, cfg = mlp(), _config(seed=5)
    params, state, opt_state, train_key = run.init_run(model, cfg, (2, 8, 8, 1), None)
    _, expect, _ = model.init(jax.random.split(jax.random.PRNGKey(5))[0], (2, 8, 8, 1))
    chex.assert_trees_all_equal(params, expect)
    chex.assert_trees_all_equal(train_key, jax.random.split(jax.random.PRNGKey(5))[1])
    assert opt_state is None and state == {}


@pytest.mark.parametrize("optimizer, extra", [("adam", {}), ("momentum", {"momentum": 0.9}),
                                              ("adamw", {"weight_decay": 0.01, "schedule": "cosine"})])
def test_init_run_gives_the_optimizers_own_state(optimizer, extra):
    """init_run compiles ``optimizer.init``: the state is optax's eager one, values and dtypes."""
    model, cfg = mlp(), _config(optimizer=optimizer, **extra)
    opt = run.make_run_optimizer(cfg, 12)
    params, _, opt_state, _ = run.init_run(model, cfg, (2, 8, 8, 1), opt)
    expect = opt.init(params)
    chex.assert_trees_all_equal(opt_state, expect)
    chex.assert_trees_all_equal_dtypes(opt_state, expect)


def test_load_checkpoint_restores_params_without_an_optimizer(tmp_path):
    """The params fit returns at step 5 are what load_checkpoint reads back, bitwise."""
    data, d = Data(), str(tmp_path / "r")
    result = fit(mlp(), data, _config(epochs=2, optimizer="adamw", weight_decay=0.01), run_dir=d, max_steps=5,
                 verbose=False)
    step, params, state = run.load_checkpoint(mlp(), run.read_config(d), d, data.x_train.shape)
    assert step == 5 and leaves_equal(params, result.params) and state == {}
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        run.load_checkpoint(mlp(), _config(), str(tmp_path), data.x_train.shape)


def test_free_run_dir_never_picks_a_directory_that_holds_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config()
    first = run.free_run_dir(cfg)
    assert first == os.path.join("runs", "mlp-digits8")
    os.makedirs(first)
    assert run.free_run_dir(cfg) == first  # an empty directory holds no run
    run.write_config(first, cfg)
    assert run.free_run_dir(cfg) == first + "-2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.read_config(first) == cfg  # today's config.json reads back without a warning


def _fake_run(d, extra=()):
    """A directory as fit leaves it: config.json, metrics.jsonl, a checkpoint file name, a temp file."""
    os.makedirs(d, exist_ok=True)
    run.write_config(d, _config())
    for name in ("metrics.jsonl", "ckpt_00000012.npz", ".tmp-ckpt_abc.npz", "curves.png.tmp.png", *extra):
        open(os.path.join(d, name), "w").close()


def test_check_new_run_dir_accepts_only_new_or_empty_directories(tmp_path):
    run.check_new_run_dir(str(tmp_path / "new"))  # does not exist: fine, nothing created
    assert not os.path.exists(tmp_path / "new")
    os.makedirs(tmp_path / "empty")
    run.check_new_run_dir(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        run.check_new_run_dir(str(tmp_path / "file"), overwrite=True)
    assert (tmp_path / "file").read_text() == "mine"


def test_a_run_is_replaced_only_with_overwrite_and_foreign_files_never(tmp_path):
    d = str(tmp_path / "r")
    _fake_run(d)
    with pytest.raises(ValueError, match="holds an fcnn run .it already holds checkpoints.: resume it"):
        run.check_new_run_dir(d)
    assert len(os.listdir(d)) == 5
    run.check_new_run_dir(d, overwrite=True)
    assert os.listdir(d) == []  # every file fit writes, and only those, removed
    _fake_run(d, extra=("notes.txt",))
    with pytest.raises(ValueError, match=r"is not empty and does not hold an fcnn run \(it holds 'notes.txt'\)"):
        run.check_new_run_dir(d, overwrite=True)
    assert "notes.txt" in os.listdir(d) and "config.json" in os.listdir(d)


def test_a_foreign_config_json_is_not_a_run(tmp_path):
    """`fcnn train --out .` in a project folder with its own config.json: refused, the file kept."""
    (tmp_path / "config.json").write_text('{"name": "my project"}')
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="does not hold an fcnn run"):
            run.check_new_run_dir(str(tmp_path), overwrite=overwrite)
    assert json.load(open(tmp_path / "config.json")) == {"name": "my project"}
    os.remove(tmp_path / "config.json")
    _fake_run(str(tmp_path / "gone"))
    for name in os.listdir(tmp_path / "gone"):
        if name.startswith("ckpt_"):
            os.remove(tmp_path / "gone" / name)
    with pytest.raises(ValueError, match="holds an fcnn run without checkpoints"):
        run.check_new_run_dir(str(tmp_path / "gone"))


@pytest.mark.parametrize("field, value", [("model", 3), ("dataset", None), ("impl", 1), ("pool_impl", None),
                                          ("data_dir", 5)])
def test_train_config_names_a_str_field_given_another_type(field, value):
    with pytest.raises(TypeError, match=rf"^{field} must be a str{' or None' if field == 'data_dir' else ''}, "
                                        rf"got {value!r} \({type(value).__name__}\)$"):
        _config(**{field: value})
    assert _config(data_dir=None).data_dir is None and _config(data_dir="~/d").data_dir == "~/d"


def test_read_config_names_the_file_when_a_field_breaks_its_rule(tmp_path):
    run.write_config(str(tmp_path), _config())
    path = str(tmp_path / "config.json")
    for edit, exc, rule in ((dict(epochs=0), ValueError, "epochs must be a positive int, got 0"),
                            (dict(lr=0.1), ValueError, r"config has unknown fields \['lr'\]"),
                            (dict(model=3), TypeError, r"model must be a str, got 3")):
        json.dump(dict(json.load(open(path)), **edit), open(path, "w"))
        with pytest.raises(exc, match=rf"^{re.escape(path)}: {rule}"):
            run.read_config(str(tmp_path))
        run.write_config(str(tmp_path), _config())
    with pytest.raises(ValueError, match=r"^dataset must be one of digits, mnist, .*; got 'imagenet'$"):
        run.load_data(_config(dataset="imagenet"))


def test_a_path_that_cannot_become_a_run_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    (tmp_path / "f.txt").write_text("mine")
    for below in ("sub", "a/b/c"):
        out = str(tmp_path / "f.txt" / below)
        with pytest.raises(ValueError, match=rf"^run_dir '{re.escape(out)}' cannot be created: "
                                             rf"'{re.escape(str(tmp_path / 'f.txt'))}' is not a directory$"):
            run.check_new_run_dir(out)
    os.symlink(str(tmp_path / "nowhere"), str(tmp_path / "link"))
    with pytest.raises(ValueError, match=r"run_dir '.*link' is a broken symbolic link"):
        run.check_new_run_dir(str(tmp_path / "link"))
    for bad, exc in (("", ValueError), (None, TypeError), (3, TypeError)):
        with pytest.raises(exc, match=r"^run_dir must be a"):
            run.check_new_run_dir(bad)
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(run.os, "access", lambda p, mode: False if p.endswith("ro") else real_access(p, mode))
    with pytest.raises(ValueError, match=r"run_dir '.*ro' is not writable"):
        run.check_new_run_dir(str(tmp_path / "ro"))  # an empty directory fcnn may not write in
    with pytest.raises(ValueError, match=r"run_dir '.*ro/new/run' cannot be created: '.*ro' is not writable"):
        run.check_new_run_dir(str(tmp_path / "ro" / "new" / "run"))
    assert sorted(os.listdir(tmp_path)) == ["f.txt", "link", "ro"] and os.listdir(tmp_path / "ro") == []


def test_dry_run_checks_what_overwrite_would_replace_and_deletes_nothing(tmp_path):
    d = str(tmp_path / "r")
    _fake_run(d)
    run.check_new_run_dir(d, overwrite=True, dry_run=True)
    assert len(os.listdir(d)) == 5
    _fake_run(d, extra=("notes.txt",))
    with pytest.raises(ValueError, match="does not hold an fcnn run"):
        run.check_new_run_dir(d, overwrite=True, dry_run=True)
