"""fcnn.report: the epoch line, the final table, the JSON-lines log and the progress bar."""
import json
import os

import pytest

from fcnn import report

RECORD = {"epoch": 3, "step": 36, "train_loss": 0.123456, "train_accuracy": 0.9, "images_per_s": 1234.4,
          "epoch_seconds": 2.04, "test_loss": 0.5, "test_accuracy": 0.875}


def test_epoch_line_holds_every_figure_rounded():
    line = report.epoch_line(RECORD, 25)
    assert line == ("epoch   3/25  step     36  loss 0.1235  acc 0.9000  test_loss 0.5000  test_acc 0.8750"
                    "  1234 img/s  2.0s")
    no_test = {k: v for k, v in RECORD.items() if not k.startswith("test")}
    assert "test" not in report.epoch_line(no_test, 25)


def test_summary_table_rows_and_alignment():
    table = report.summary_table([RECORD], 36, 12.34, {"loss": 0.5, "accuracy": 0.875, "n": 359})
    lines = table.splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) <= {"+", "-"}
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[1:-1]}
    assert rows == {"epochs": "3", "steps": "36", "time": "12.3 s", "train loss": "0.1235",
                    "train accuracy": "0.9000", "test loss": "0.5000", "test accuracy": "0.8750",
                    "test examples": "359"}
    assert len({len(line) for line in lines}) == 1  # every row as wide as the rule


def test_jsonl_round_trip_and_a_torn_last_line_is_dropped(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    assert report.read_jsonl(path) == []
    report.write_jsonl(path, [RECORD])
    report.append_jsonl(path, dict(RECORD, epoch=4))
    with open(path, "a") as f:
        f.write('{"epoch": 5, "st')  # a crash in the middle of a write
    assert [r["epoch"] for r in report.read_jsonl(path)] == [3, 4]
    report.write_json(str(tmp_path / "c.json"), {"a": 1})
    assert json.load(open(tmp_path / "c.json")) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["c.json", "metrics.jsonl"]  # no temp file left behind


def test_epoch_bar_shows_the_running_means(capsys):
    bar = report.EpochBar(0, 2, 10, 0, enabled=True)
    bar.update(4, 0.25, {"accuracy": 0.5}, 100.0)
    assert bar._bar.n == 4 and set(bar._bar.postfix.split(", ")) == {"loss=0.2500", "acc=0.5000", "img_s=100"}
    bar.update(6, 0.125, {"mean_iou": 0.75, "psnr": 12.5}, 50.0)  # a task's metrics, each by its name
    assert bar._bar.n == 6 and set(bar._bar.postfix.split(", ")) == {"loss=0.1250", "mean_iou=0.7500",
                                                                      "psnr=12.5000", "img_s=50"}
    bar.close()
    off = report.EpochBar(0, 2, 10, 0, enabled=False)
    off.update(4, None, {}, 1.0)
    off.write("a line")
    assert capsys.readouterr().out == "a line\n"


def test_plot_curves_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "curves.png")
    assert report.plot_curves([RECORD, dict(RECORD, epoch=4)], path) is None
    png = open(path, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_lines_and_tables_show_a_tasks_metrics():
    rec = {"epoch": 2, "step": 90, "train_loss": 0.5, "train_mean_iou": 0.71234, "train_foreground_iou": 0.6,
           "images_per_s": 1234.0, "epoch_seconds": 3.25, "test_loss": 0.625, "test_mean_iou": 0.8125,
           "test_foreground_iou": 0.75}
    line = report.epoch_line(rec, 12, ("mean_iou", "foreground_iou"))
    assert line == ("epoch   2/12  step     90  loss 0.5000  mean_iou 0.7123  foreground_iou 0.6000  "
                    "test_loss 0.6250  test_mean_iou 0.8125  test_foreground_iou 0.7500  1234 img/s  3.2s")
    table = report.summary_table([rec], 90, 7.0, {"loss": 0.625, "mean_iou": 0.8125, "n": 359}, ("mean_iou",))
    assert "| train mean iou | 0.7123 |" in table and "| test mean iou  | 0.8125 |" in table
    assert "accuracy" not in table


def test_json_files_are_written_durably(tmp_path, monkeypatch):
    """config.json and metrics.jsonl: the temp file's data reaches the disk before the rename, and the
    rename before the call returns (the folder fsynced), as for checkpoints; before, neither was
    fsynced, so a power cut after the rename could leave an empty config.json."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", a, b)) or real_replace(a, b))
    for write, name, obj in ((report.write_json, "config.json", {"a": 1}), (report.write_jsonl, "m.jsonl", [RECORD])):
        events.clear()
        path = str(tmp_path / name)
        write(path, obj)
        assert events == [("fsync", path + ".tmp"), ("replace", path + ".tmp", path), ("fsync", "dir")], events
