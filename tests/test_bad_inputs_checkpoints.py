"""Issue 17's bad inputs to fcnn.checkpoint (save / restore / latest / load_latest, and damaged,
foreign or mismatched checkpoint files) and fcnn.run.read_config (the run's config.json): the error
names the file and the rule. The battery's map and conventions: test_bad_inputs.py.
"""
import json
import os

import jax
import numpy as np
import pytest

from _bad_inputs import KEY, _all, _case, _file, _run_dir

import fcnn
from fcnn import checkpoint
from fcnn.run import TrainConfig, read_config

KEY_TYPED = jax.random.wrap_key_data(KEY)


_TREE = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _saved(d, tree=None, step_=1, **kw):
    return checkpoint.save(str(d / "run"), step_, _TREE if tree is None else tree, **kw)


def _damaged(d, edit):
    """A saved checkpoint, its bytes passed through ``edit``; returns its path."""
    path = _saved(d)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(edit(raw))
    return path


def _flip_data_byte(raw: bytes) -> bytes:
    i = raw.index(np.ones((2, 3), np.float32).tobytes())  # leaf "b" comes first: w's bytes are unique
    return raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]


def _npz(d, name="ckpt_00000001.npz", **arrays):
    (d / "run").mkdir(exist_ok=True)
    path = str(d / "run" / name)
    np.savez(path, **arrays)
    return path


def _manifest(**over):
    m = {"format": "fcnn-checkpoint", "format_version": 1, "step": 1, "leaves": [], "sha256": "", "metadata": {}}
    m.update(over)
    return np.frombuffer(json.dumps(m).encode(), np.uint8)


_GOOD_CONFIG = json.dumps(dict(TrainConfig().to_dict(), fcnn_version=fcnn.__version__), indent=1)

CHECKPOINTS = [
    _case(lambda d: _saved(d, step_=-1), ValueError, r"step must be a non-negative int, got -1", "save-step-negative"),
    _case(lambda d: _saved(d, step_=1.5), ValueError, r"step must be a non-negative int", "save-step-float"),
    _case(lambda d: _saved(d, step_=True), ValueError, r"step must be a non-negative int", "save-step-bool"),
    _case(lambda d: _saved(d, keep=0), ValueError, r"keep must be a positive int, got 0", "save-keep-0"),
    _case(lambda d: _saved(d, keep=None), ValueError, r"keep must be a positive int", "save-keep-none"),
    _case(lambda d: _saved(d, metadata=[1, 2]), TypeError, r"metadata must be a dict or None, got list",
          "save-metadata-list"),
    _case(lambda d: _saved(d, metadata={"f": object()}), TypeError, r"metadata must be JSON-serialisable",
          "save-metadata-object"),
    _case(lambda d: _saved(d, tree={"w": object()}), TypeError, r"checkpoint leaves must be arrays or numbers",
          "save-object-leaf"),
    _case(lambda d: checkpoint.save(_file(d), 1, _TREE), (OSError, ValueError), r"f\.txt", "save-run-dir-is-file"),
    _case(lambda d: checkpoint.restore(str(d / "ckpt_00000001.npz")), FileNotFoundError,
          r"ckpt_00000001\.npz: checkpoint not found", "restore-missing"),
    _case(lambda d: checkpoint.restore(_file(d, "ckpt_00000001.npz", "garbage")), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: corrupt or truncated checkpoint", "restore-garbage"),
    _case(lambda d: checkpoint.restore(_damaged(d, lambda raw: raw[: len(raw) // 2])), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: corrupt or truncated checkpoint", "restore-truncated"),
    _case(lambda d: checkpoint.restore(_damaged(d, _flip_data_byte)), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: (checksum mismatch|corrupt)", "restore-flipped-byte"),
    _case(lambda d: checkpoint.restore(_npz(d, leaf_00000=np.ones(3))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: (corrupt|not an fcnn checkpoint)", "restore-no-manifest"),
    _case(lambda d: checkpoint.restore(_npz(d, __manifest__=_manifest(format="orbax"))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: not an fcnn checkpoint \(format 'orbax'\)", "restore-foreign-format"),
    _case(lambda d: checkpoint.restore(_npz(d, __manifest__=_manifest(format_version=2))), checkpoint.CheckpointError,
          r"ckpt_00000001\.npz: checkpoint format_version 2 is not supported", "restore-format-version"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((3, 3), np.float32), "b": _TREE["b"]}),
          checkpoint.CheckpointError, r"ckpt_00000001\.npz is from a different model: leaf 'w' has shape \(2, 3\), "
                                      r"expected \(3, 3\)", "restore-template-shape"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((2, 3)), "b": np.zeros(3, np.float32)}),
          checkpoint.CheckpointError, r"different model: leaf 'w' has dtype float32, expected float64",
          "restore-template-dtype"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"w": np.ones((2, 3), np.float32)}), checkpoint.CheckpointError,
          r"different model: it holds 2 leaves, the template has 1", "restore-template-leaves"),
    _case(lambda d: checkpoint.restore(_saved(d), like={"v": _TREE["w"], "b": _TREE["b"]}), checkpoint.CheckpointError,
          r"different model: leaf 'w' is where the template has 'v'", "restore-template-names"),
    _case(lambda d: checkpoint.restore(_saved(d, tree={"key": np.zeros(2, np.uint32)}), like={"key": KEY_TYPED}),
          checkpoint.CheckpointError, r"leaf 'key' is not a typed PRNG key in the checkpoint but is in the template",
          "restore-template-key"),
    _case(lambda d: checkpoint.restore(_saved(d), like=[1, 2], subtrees=True), TypeError,
          r"like must be a dict of top-level entries with subtrees=True", "restore-subtrees-list"),
    _case(lambda d: checkpoint.load_latest(os.path.dirname(_damaged(d, lambda raw: raw[:50]))),
          checkpoint.CheckpointError, r"every checkpoint is corrupt: .*ckpt_00000001\.npz", "load_latest-all-corrupt"),
    _case(lambda d: checkpoint.latest(os.path.dirname(_damaged(d, lambda raw: b"x" + raw))), checkpoint.CheckpointError,
          r"every checkpoint is corrupt", "latest-all-corrupt"),
    _case(lambda d: checkpoint.load_latest(os.path.dirname(_saved(d)), like={"w": np.ones(6, np.float32),
                                                                           "b": np.zeros(3, np.float32)}),
          checkpoint.CheckpointError, r"ckpt_00000001\.npz is from a different model: leaf 'w'",
          "load_latest-template"),
    # the run's config.json
    _case(lambda d: read_config(str(d / "nope")), FileNotFoundError, r"run directory '.*nope' has no config\.json",
          "read_config-missing"),
    _case(lambda d: read_config(_run_dir(d, _GOOD_CONFIG[: len(_GOOD_CONFIG) // 2])), ValueError,
          r"config\.json is not valid JSON", "read_config-cut-in-half"),
    _case(lambda d: read_config(_run_dir(d, "[1, 2]")), ValueError,
          r"config\.json must hold a JSON object of TrainConfig fields, got list", "read_config-list"),
    _case(lambda d: read_config(_run_dir(d, _GOOD_CONFIG.replace('"epochs": 25', '"epochs": 0'))), ValueError,
          _all(r"config\.json", r"epochs must be a positive int"), "read_config-bad-field"),
    _case(lambda d: read_config(_run_dir(d, '{"epochs": 2, "lr": 0.1}')), ValueError,
          _all(r"config\.json", r"unknown fields \['lr'\]"), "read_config-unknown-field"),
]


@pytest.mark.parametrize("call, exc, pattern", CHECKPOINTS)
def test_checkpoints_and_run_files_refuse_bad_input(call, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)
