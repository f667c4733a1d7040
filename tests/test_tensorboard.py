"""Tests for fcnn.tensorboard: records written through tensorboardX come back from the event
files (parsed by fcnn.tensorboard.read_scalars and, independently, by tensorboardX's own
file-reader when present) equal to their float32 values; fit(tensorboard=True) logs every
scalar of metrics.jsonl."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

from fcnn import tensorboard as tb  # noqa: E402


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_scalars_of_logs_numbers_but_epoch_step_events_and_nan():
    rec = {"epoch": 1, "step": 22, "train_loss": 0.5, "test_psnr": float("inf"), "note": "x", "flag": True,
           "bad": float("nan")}
    assert tb.scalars_of(rec) == {"train_loss": 0.5, "test_psnr": float("inf")}
    assert tb.scalars_of({"event": "extended", "step": 3, "from_epochs": 2}) == {}


def test_records_round_trip_through_event_files(tmp_path):
    records = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / (e + 0.1), "images_per_s": 1234.5 + e,
                "learning_rate": 3e-3 * 0.9 ** e} for e in range(1, 4)]
    log = tb.ScalarLog(str(tmp_path))
    for r in records:
        log.write(r)
    log.close()
    files = [n for n in os.listdir(tmp_path) if n.startswith(tb.EVENT_FILE_PREFIX)]
    assert len(files) == 1
    got = tb.read_scalars(str(tmp_path))
    assert sorted(got) == ["images_per_s", "learning_rate", "train_loss"]
    for tag in got:
        assert got[tag] == [(r["step"], float(np.float32(r[tag]))) for r in records]


def test_event_file_framing_and_checksums(tmp_path):
    """The file is TFRecord framing with valid masked CRC32Cs (tensorboardX's own crc, recomputed
    here), and its last Event holds the scalar at its step."""
    import struct

    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    log = tb.ScalarLog(str(tmp_path))
    log.write({"epoch": 1, "step": 5, "train_loss": 0.25})
    log.close()
    data = open(os.path.join(tmp_path, os.listdir(tmp_path)[0]), "rb").read()
    at, events = 0, []
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        assert struct.unpack_from("<I", data, at + 8)[0] == masked_crc32c(data[at:at + 8])
        payload = data[at + 12:at + 12 + n]
        assert struct.unpack_from("<I", data, at + 12 + n)[0] == masked_crc32c(payload)
        events.append(event_pb2.Event.FromString(payload))
        at += 16 + n
    assert at == len(data) and events[0].file_version.startswith("brain.Event")
    (v,) = events[-1].summary.value
    assert (events[-1].step, v.tag, v.simple_value) == (5, "train_loss", 0.25)
    assert tb.read_scalars(str(tmp_path)) == {"train_loss": [(5, 0.25)]}


def test_a_torn_last_record_is_dropped(tmp_path):
    log = tb.ScalarLog(str(tmp_path))
    log.write({"step": 1, "train_loss": 2.0})
    log.write({"step": 2, "train_loss": 1.0})
    log.close()
    path = os.path.join(tmp_path, os.listdir(tmp_path)[0])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    assert tb.read_scalars(str(tmp_path)) == {"train_loss": [(1, 2.0)]}


def test_a_second_log_in_the_same_second_keeps_the_first_file(tmp_path, monkeypatch):
    """tensorboardX names an event file by the second and the host; two logs opened within one
    second (a resume right after a short run) must not replace each other's file."""
    import tensorboardX.event_file_writer as efw

    monkeypatch.setattr(efw.time, "time", lambda: 1767225600.25)  # one frozen second for both
    for step, value in ((1, 2.0), (2, 1.5)):
        log = tb.ScalarLog(str(tmp_path), purge_step=step if step > 1 else None)
        log.write({"step": step, "train_loss": value})
        log.close()
    assert len([n for n in os.listdir(tmp_path) if n.startswith(tb.EVENT_FILE_PREFIX)]) == 2
    assert tb.read_scalars(str(tmp_path)) == {"train_loss": [(1, 2.0), (2, 1.5)]}


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^purge_step must be a non-negative int, got -1$"):
        tb.ScalarLog("x", purge_step=-1)


def test_fit_tensorboard_logs_every_scalar_of_metrics_jsonl(tmp_path):
    """fit(tensorboard=True): each number of each metrics.jsonl record (loss, the task's metrics,
    learning rate, images/s) comes back from the events at the record's step; a resumed run adds
    a second file whose events continue the first."""
    from _tiny import Data, mlp
    from fcnn.train import TrainConfig, fit

    cfg = TrainConfig(model="mlp", dataset="digits8", epochs=3, batch_size=64, eval_batch_size=64)
    run = str(tmp_path / "run")
    fit(mlp(), Data(), cfg, run_dir=run, tensorboard=True, max_steps=8, verbose=False)
    fit(mlp(), Data(), cfg, run_dir=run, tensorboard=True, resume=True, verbose=False)
    records = _jsonl(os.path.join(run, "metrics.jsonl"))
    assert [r["step"] for r in records] == [6, 12, 18]
    got = tb.read_scalars(run)
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate", "images_per_s",
            "epoch_seconds"} == set(got)
    for tag, points in got.items():
        assert points == [(r["step"], float(np.float32(r[tag]))) for r in records], tag
    assert len([n for n in os.listdir(run) if n.startswith(tb.EVENT_FILE_PREFIX)]) == 2


def test_fit_tensorboard_needs_a_run_dir():
    from _tiny import Data, mlp
    from fcnn.train import TrainConfig, fit

    with pytest.raises(ValueError, match="tensorboard=True writes its event files into run_dir"):
        fit(mlp(), Data(), TrainConfig(model="mlp", epochs=1), tensorboard=True, verbose=False)
