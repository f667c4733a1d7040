"""Issue 17's bad inputs to every command of ``fcnn`` (train, eval, summary, gradcheck, viz): status 2
(1 for runtime failures), ONE line on stderr that starts with "fcnn" and names the argument or file,
no "Traceback", no run directory written; and one in a real process. The rows that need a run share
``fake_run``, made without training; it is module-scoped, so the CLI rows stay in this one module.
The battery's map and conventions: test_bad_inputs.py.
"""
import json
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

from _bad_inputs import (KEY, _all, _cifar_bin, _fails, _file, _foreign_dir, _init, _mnist, _put, _run_dir,
                         _zeros)
from _formats import idx_bytes

import fcnn
from fcnn import checkpoint, cli
from fcnn.run import TrainConfig, build_model, make_run_optimizer, write_config


_FAKE_RUN_CONFIG = dict(model="example_net", dataset="synthetic", impl="lax", pool_impl="lax", augment_shift=0,
                        epochs=5, batch_size=32, eval_batch_size=64, optimizer="sgd", schedule="constant")


def _save_fake_checkpoint(where, metadata=True):
    """The checkpoint ``fit`` would save at the end of epoch 1 of the fake run, with zero params;
    ``metadata=False``: with the config only (no epoch_sums, epoch, ...)."""
    config = TrainConfig(**_FAKE_RUN_CONFIG)
    _, params, state = _init(build_model(config, 4), (1, 16, 16, 1))
    params, state = _zeros(params), _zeros(state)
    opt_state = _zeros(jax.eval_shape(make_run_optimizer(config, 16).init, params))
    meta = {"config": config.to_dict()}
    if metadata:
        meta.update(fcnn_version=fcnn.__version__, epoch_sums=[20.0, 8.0, 16], epoch=1, step_in_epoch=0)
    checkpoint.save(where, 16, {"params": params, "state": state, "opt_state": opt_state, "key": np.asarray(KEY)},
                    metadata=meta)


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run directory as ``fcnn train`` leaves it (config.json, a checkpoint at step 16, one epoch
    record), made without training or computing: example_net (5 top-level layers) on the 16x16
    synthetic set (4 classes, 256 test images), 5 epochs of 16 steps, zero params."""
    d = str(tmp_path_factory.mktemp("fake_run"))
    write_config(d, TrainConfig(**_FAKE_RUN_CONFIG))
    _save_fake_checkpoint(d)
    record = {"epoch": 1, "step": 16, "train_loss": 1.3, "train_accuracy": 0.4, "test_loss": 1.2, "test_accuracy": 0.5}
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps(record) + "\n")
    return d


def _copy_run(d, run, edit=None):
    """A copy of the fake run in d/copy, then ``edit(copy)``."""
    import shutil

    dst = str(d / "copy")
    shutil.copytree(run, dst)
    if edit is not None:
        edit(dst)
    return dst


def _edit_config(**fields):
    def edit(where):
        path = os.path.join(where, "config.json")
        cfg = json.load(open(path))
        cfg.update(fields)
        json.dump(cfg, open(path, "w"))
    return edit


def _truncate(name, keep=None):
    def edit(where):
        path = os.path.join(where, name)
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[: len(raw) // 2 if keep is None else keep])
    return edit


def _other_model_checkpoint(where):
    """Replace the checkpoint with one of another model's params (a copy from another run, say)."""
    _delete_checkpoints(where)
    checkpoint.save(where, 16, {"params": ({"w": np.zeros((3, 3, 1, 8), np.float32)},), "state": ((),),
                                "opt_state": (), "key": np.asarray(KEY)})


def _delete_checkpoints(where):
    for name in os.listdir(where):
        if name.startswith("ckpt_"):
            os.remove(os.path.join(where, name))


_SHORT = ["--epochs", "1", "--max-steps", "1", "--no-progress"]


def _train(*extra):
    return lambda d, run: ["train", *_SHORT, *extra, "--out", str(d / "out")]


def _cli(argv_fn, status, pattern, id, xfail=None):
    return pytest.param(argv_fn, status, pattern, id=id, marks=() if xfail is None else _fails(xfail))


CLI = [
    # fcnn train: arguments refused by the parser and by TrainConfig, before any data is loaded
    _cli(_train("--epochs", "0"), 2, r"argument --epochs: must be a positive int, got '0'", "train-epochs-0"),
    _cli(_train("--epochs", "abc"), 2, r"argument --epochs: must be a positive int, got 'abc'", "train-epochs-str"),
    _cli(_train("--batch-size", "-1"), 2, r"argument --batch-size: must be a positive int", "train-batch-size"),
    _cli(_train("--batch-size", "2.5"), 2, r"argument --batch-size", "train-batch-size-float"),
    _cli(_train("--lr", "0"), 2, r"(--lr|learning_rate) must be a positive float, got 0", "train-lr-0"),
    _cli(_train("--lr", "nan"), 2, r"(--lr|learning_rate) must be a positive float, got nan", "train-lr-nan"),
    _cli(_train("--lr", "inf"), 2, r"(--lr|learning_rate) must be a positive float, got inf", "train-lr-inf"),
    _cli(_train("--lr", "fast"), 2, r"argument --lr: invalid float value: 'fast'", "train-lr-str"),
    _cli(_train("--momentum", "1.5"), 2, r"momentum must be a float in \[0, 1\)", "train-momentum"),
    _cli(_train("--l2", "-1"), 2, r"l2 must be a non-negative float", "train-l2-negative"),
    _cli(_train("--l2", "nan"), 2, r"l2 must be a non-negative float, got nan", "train-l2-nan"),
    _cli(_train("--l2", "abc"), 2, r"argument --l2: invalid float value", "train-l2-str"),
    _cli(_train("--weight-decay", "0.1"), 2, r"weight_decay applies only to optimizer 'adamw'",
         "train-weight-decay-adam"),
    _cli(_train("--weight-decay", "inf", "--optimizer", "adamw"), 2, r"weight_decay must be a non-negative float",
         "train-weight-decay-inf"),
    _cli(_train("--label-smoothing", "1"), 2, r"label_smoothing must be a float in \[0.0, 1.0\)",
         "train-label-smoothing"),
    _cli(_train("--augment-shift", "-1"), 2, r"augment_shift must be a non-negative int \(pixels\), got -1",
         "train-augment-shift-negative"),
    _cli(_train("--seed", "-3"), 2, r"seed must be an int in \[0, 4294967296\), got -3", "train-seed"),
    _cli(_train("--seed", "1e3"), 2, r"argument --seed: invalid int value", "train-seed-float"),
    _cli(_train("--keep", "0"), 2, r"argument --keep: must be a positive int", "train-keep"),
    _cli(_train("--checkpoint-every", "0"), 2, r"argument --checkpoint-every: must be a positive int",
         "train-checkpoint-every"),
    _cli(_train("--steps-per-call", "0"), 2, r"argument --steps-per-call: must be a positive int",
         "train-steps-per-call"),
    _cli(_train("--dtype-policy", "f16"), 2, r"dtype_policy must be one of f32, bf16; got 'f16'", "train-dtype-policy"),
    _cli(_train("--precision", "f16"), 2, r"precision must be one of f32, bf16", "train-precision-deprecated"),
    _cli(_train("--optimizer", "adamx"), 2, r"optimizer must be one of .*got 'adamx'", "train-optimizer"),
    _cli(_train("--schedule", "linear"), 2, r"schedule must be one of .*got 'linear'", "train-schedule"),
    _cli(_train("--parallel", "gpu"), 2, r"parallel must be one of .*got 'gpu'", "train-parallel"),
    _cli(_train("--devices", "2"), 2,
         r"devices=2 needs parallel 'pmap' or 'sharding'", "train-devices-without-parallel"),
    _cli(_train("--parallel", "pmap", "--devices", "4096"), 2, r"devices=4096 exceeds the \d+ available",
         "train-devices-too-many"),
    _cli(_train("--model", "resnet"), 2, r"--model must be one of .*got 'resnet'", "train-model"),
    _cli(_train("--no-such-flag"), 2, r"unrecognized arguments: --no-such-flag", "train-unknown-flag"),
    _cli(lambda d, run: ["train", *_SHORT, "--resume", str(d / "nope")], 2, r"nope.*has no config\.json",
         "train-resume-missing"),
    _cli(lambda d, run: ["train", "--resume", run, "--out", str(d / "o")], 2,
         r"--out cannot be combined with --resume", "train-resume-with-out"),
    _cli(lambda d, run: ["train", "--resume", run, "--seed", "3"], 2,
         r"only --epochs, --parallel, --devices, --data-dir may be given with it, got --seed", "train-resume-with-seed"),
    _cli(lambda d, run: ["train", "--resume", run, "--lr", "0.1"], 2,
         r"only --epochs, --parallel, --devices, --data-dir may be given with it, got --lr\b", "train-resume-with-lr"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run), "--epochs", "2", "--no-progress"], 2,
         r"epochs=2 is fewer than the run's 5: a resumed run may be extended, never shortened",
         "train-resume-shrinks-epochs"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run, lambda w: _save_fake_checkpoint(w, metadata=False)),
                         "--epochs", "6", "--no-progress"], 2, _all(r"ckpt_00000016\.npz", "epoch_sums"),
         "train-resume-checkpoint-without-fit-metadata"),
    _cli(lambda d, run: ["train", "--resume", _copy_run(d, run, _truncate("config.json")), "--epochs", "2"], 2,
         r"copy/config\.json is not valid JSON", "train-resume-config-cut"),
    # --out that would destroy something
    _cli(lambda d, run: ["train", *_SHORT, "--out", _file(d)], 2, r"run_dir '.*f\.txt' is a file, not a directory",
         "train-out-is-a-file"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "synthetic", "--model", "example_net", "--optimizer", "sgd",
                         "--out", _foreign_dir(d), "--overwrite"], 2,
         r"run_dir '.*proj' is not empty and does not hold an fcnn run", "train-out-foreign-overwrite"),
    _cli(lambda d, run: ["train", *_SHORT, "--out", run], 2,
         r"holds an fcnn run \(it already holds checkpoints\): resume it", "train-out-holds-a-run"),
    _cli(lambda d, run: ["train", *_SHORT, "--out", _copy_run(d, run, _delete_checkpoints)], 2,
         r"holds an fcnn run without checkpoints .*: nothing to resume; replace it \(--overwrite", "train-out-run-without-checkpoints"),
    # bad data: refused after loading, before training
    _cli(_train("--dataset", "imagenet"), 2, r"(--dataset|dataset).*'imagenet'", "train-dataset-unknown"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "mnist", "--data-dir", str(d / "none"), "--out",
                         str(d / "out")], 2, r"dataset file not found; looked for: .*none.*train-images",
         "train-mnist-missing"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "mnist", "--out", str(d / "out"), "--data-dir",
                         _mnist(edit=_put("t10k-labels-idx1-ubyte", idx_bytes(np.full(5, 10))))(d)], 2,
         r"t10k-labels-idx1-ubyte: label 10 at index 0 is out of range", "train-mnist-damaged"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "cifar10", "--out", str(d / "out"), "--data-dir",
                         _cifar_bin(edit=_put("data_batch_5.bin", bytes(3000)))(d)], 2,
         r"data_batch_5\.bin: length 3000 bytes", "train-cifar-damaged"),
    _cli(_train("--dataset", "synthetic", "--augment-shift", "16"), 2,
         r"augment_shift=16 must be smaller than the images \(16x16\)", "train-augment-shift-too-large"),
    _cli(_train("--dataset", "synthetic", "--batch-size", "4096"), 2,
         r"batch_size must be <= the number of training examples \(512\), got 4096", "train-batch-larger-than-data"),
    _cli(_train("--dataset", "synthetic", "--impl", "fast"), 2, r"impl must be one of .*got 'fast'", "train-impl"),
    _cli(_train("--dataset", "synthetic", "--pool-impl", "fft"), 2, r"impl must be one of .*got 'fft'",
         "train-pool-impl"),
    _cli(lambda d, run: ["train", *_SHORT, "--dataset", "synthetic", "--model", "example_net", "--optimizer",
                         "sgd", "--out", os.path.join(_file(d), "sub")], 2,
         r"run_dir '.*f\.txt/sub' cannot be created: '.*f\.txt' is not a directory", "train-out-under-a-file"),
    # fcnn eval
    _cli(lambda d, run: ["eval"], 2, r"the following arguments are required: --run", "eval-no-run"),
    _cli(lambda d, run: ["eval", "--run", str(d / "nope")], 2, r"run directory '.*nope' has no config\.json",
         "eval-missing"),
    _cli(lambda d, run: ["eval", "--run", _file(d)], 2, r"f\.txt.*has no config\.json", "eval-run-is-a-file"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _truncate("config.json"))], 2,
         r"copy/config\.json is not valid JSON", "eval-config-cut-in-half"),
    _cli(lambda d, run: ["eval", "--run", _run_dir(d, "[1]")], 2, r"config\.json must hold a JSON object",
         "eval-config-list"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _delete_checkpoints)], 2,
         r"run_dir '.*copy' holds no checkpoint", "eval-no-checkpoint"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _truncate("ckpt_00000016.npz"))], 2,
         r"every checkpoint is corrupt: .*ckpt_00000016\.npz", "eval-checkpoint-corrupt"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _other_model_checkpoint)], 2,
         r"ckpt_00000016\.npz is from a different model", "eval-checkpoint-of-another-model"),
    _cli(lambda d, run: ["eval", "--run", _copy_run(d, run, _edit_config(epochs=0))], 2,
         _all(r"config\.json", r"epochs must be a positive int"), "eval-config-bad-field"),
    # fcnn summary
    _cli(lambda d, run: ["summary", "--model", "resnet"], 2, r"--model must be one of .*got 'resnet'", "summary-model"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,28,28"], 2, r"argument --in-shape: must be 4 positive ints",
         "summary-in-shape-rank3"),
    _cli(lambda d, run: ["summary", "--in-shape", "a,b,c,d"], 2, r"argument --in-shape: must be comma-separated ints",
         "summary-in-shape-str"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,0,28,1"], 2, r"argument --in-shape: must be 4 positive ints",
         "summary-in-shape-zero"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,4,4,1"], 2, r"kernel is larger than the padded input",
         "summary-in-shape-too-small-rule"),
    _cli(lambda d, run: ["summary", "--in-shape", "1,4,4,1"], 2, _all(r"(--in-shape|in_shape|Conv2D)",
         r"kernel is larger"),
         "summary-in-shape-too-small-names-layer"),
    _cli(lambda d, run: ["summary", "--num-classes", "0"], 2, r"argument --num-classes: must be a positive int",
         "summary-num-classes"),
    _cli(lambda d, run: ["summary", "--bogus"], 2, r"unrecognized arguments: --bogus", "summary-unknown-flag"),
    _cli(lambda d, run: ["frobnicate"], 2, r"invalid choice: 'frobnicate'", "unknown-command"),
    _cli(lambda d, run: [], 2, r"the following arguments are required", "no-command"),
    # fcnn gradcheck
    _cli(lambda d, run: ["gradcheck", "--op", "conv3d"], 2, r"argument --op: invalid choice: 'conv3d'",
         "gradcheck-op"),
    _cli(lambda d, run: ["gradcheck", "--dtype", "float16"], 2, r"argument --dtype: invalid choice: 'float16'",
         "gradcheck-dtype"),
    _cli(lambda d, run: ["gradcheck", "--sweep", "huge"], 2, r"argument --sweep: invalid choice", "gradcheck-sweep"),
    _cli(lambda d, run: ["gradcheck", "--ties", "last"], 2, r"argument --ties: invalid choice: 'last'",
         "gradcheck-ties"),
    _cli(lambda d, run: ["gradcheck", "--mutant", "nope"], 2, r"mutant must be one of", "gradcheck-mutant"),
    _cli(lambda d, run: ["gradcheck", "--impl", "fast", "--op", "conv2d"], 2, r"impl must be one of .*'fast'",
         "gradcheck-impl"),
    _cli(lambda d, run: ["gradcheck", "--frobnicate"], 2, r"unrecognized arguments: --frobnicate",
         "gradcheck-unknown-flag"),
    # fcnn viz
    _cli(lambda d, run: ["viz", "--what", "saliency", "--out", str(d / "x.png")], 2,
         r"the following arguments are required: --run", "viz-no-run"),
    _cli(lambda d, run: ["viz", "--run", run, "--out", str(d / "x.png")], 2,
         r"the following arguments are required: --what", "viz-no-what"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "nonsense", "--out", str(d / "x.png")], 2,
         r"argument --what: invalid choice: 'nonsense'", "viz-what"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "one", "--out", str(d / "x.png")], 2,
         r"argument --index: invalid int value: 'one'", "viz-index-str"),
    _cli(lambda d, run: ["viz", "--run", str(d / "nope"), "--what", "saliency", "--out", str(d / "x.png")], 2,
         r"--run '.*nope': no such run directory", "viz-run-missing"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, lambda w: os.remove(os.path.join(w, "metrics.jsonl"))),
                         "--what", "curves", "--out", str(d / "x.png")], 2, r"run_dir '.*copy' has no metrics\.jsonl",
         "viz-curves-no-metrics"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, _truncate("metrics.jsonl", 10)), "--what", "curves",
                         "--out", str(d / "x.png")], 2, r"metrics\.jsonl holds no complete epoch record",
         "viz-curves-torn-metrics"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "100000", "--out", str(d / "x.png")], 2,
         r"--index 100000 is out of range: the test set has 256 images", "viz-index-too-large"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "saliency", "--index", "-1", "--out", str(d / "x.png")], 2,
         r"--index -1 is out of range", "viz-index-negative"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "gradcam", "--layer", "42", "--out", str(d / "x.png")], 2,
         r"--layer 42 is out of range: the model has 5 top-level layers", "viz-layer-out-of-range"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "gradcam", "--layer", "conv9", "--out", str(d / "x.png")], 2,
         r"--layer 'conv9': no top-level layer has that name", "viz-layer-unknown"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "filters", "--layer", "1.Relu", "--out", str(d / "x.png")], 2,
         r"--layer 1\.Relu is not a top-level Conv2D", "viz-filters-not-conv"),
    _cli(lambda d, run: ["viz", "--run", run, "--what", "curves", "--out", os.path.join(_file(d), "x.png")], 2,
         r"--out '.*f\.txt/x\.png': '.*f\.txt' is not a folder", "viz-out-under-a-file"),
    _cli(lambda d, run: ["viz", "--run", _copy_run(d, run, _truncate("ckpt_00000016.npz")), "--what", "saliency",
                         "--out", str(d / "x.png")], 2, r"every checkpoint is corrupt: .*ckpt_00000016\.npz",
         "viz-checkpoint-corrupt"),
]


@pytest.mark.parametrize("argv_fn, status, pattern", CLI)
def test_cli_answers_bad_input_with_one_line(argv_fn, status, pattern, tmp_path, fake_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would land here, never in the project
    monkeypatch.delenv("FCNN_DEBUG", raising=False)
    argv = argv_fn(tmp_path, fake_run)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as shown:  # what `python -m fcnn.cli` would print of them
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        status_got = cli.main(argv)
    err = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in shown)
    err += capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcnn"), err
    assert re.search(pattern, lines[0]), lines[0]
    assert status_got == status, (status_got, lines[0])
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out"), "a run directory was written"
    assert not os.path.exists(tmp_path / "runs")


def test_cli_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, CI="1", JAX_PLATFORMS="cpu")
    env.pop("FCNN_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "fcnn.cli", "train", "--lr", "inf", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcnn"), p.stderr
    assert re.search(r"(--lr|learning_rate) must be a positive float, got inf", lines[0])
    assert not (tmp_path / "out").exists()
