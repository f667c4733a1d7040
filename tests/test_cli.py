"""The `fcnn` command: train / eval / summary, argument errors, kill-and-resume."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import chex
import pytest

from fcnn import cli
from fcnn.run import load_run

TEST_ACC = re.compile(r"^test accuracy: ([0-9.]+)", re.M)
SUBPROCESS_ENV = dict(os.environ, CI="1", JAX_PLATFORMS="cpu")


def _run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "fcnn.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=SUBPROCESS_ENV)


def _untimed(path):
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_s" not in k}
            for line in open(path)]


def test_train_prints_test_accuracy_and_eval_reproduces_it(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", "--epochs", "1", "--batch-size", "64", "--out", run, "--no-progress"]) == 0
    out = capsys.readouterr().out
    acc = float(TEST_ACC.findall(out)[-1])
    assert 0.5 < acc <= 1.0  # one epoch of LeNet on digits is well above chance (0.1)
    assert "| test accuracy" in out  # the summary table
    for name in ("config.json", "metrics.jsonl", "curves.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0
    assert cli.main(["eval", "--run", run]) == 0
    assert float(TEST_ACC.findall(capsys.readouterr().out)[-1]) == acc


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--model", "nope"], "nope"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--precision", "f16"], "precision must be one of"),
        (["train", "--optimizer", "adamx"], "optimizer must be one of"),
        (["train", "--resume", "/nonexistent/run"], "config.json"),
        (["eval"], "--run"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "error" in err[0]


def test_bad_argument_in_a_real_process_has_no_traceback():
    p = _run_cli("train", "--model", "nope", timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith("fcnn") and "nope" in p.stderr


def test_gradcheck_and_viz_are_handed_their_arguments(monkeypatch):
    """`fcnn gradcheck` goes to fcnn.sweep and `fcnn viz` to fcnn.viz (each module its own), with the
    rest of the command line as given and the module's status returned (None: 0)."""
    seen = []

    def fake(name, rc):
        mod = types.ModuleType(name)
        mod.cli_main = lambda argv: seen.append((name, argv)) or rc
        monkeypatch.setitem(sys.modules, name, mod)

    fake("fcnn.sweep", 3)
    fake("fcnn.viz", None)
    assert cli.main(["gradcheck", "--impl", "im2col", "-x"]) == 3
    assert cli.main(["viz", "--run", "r", "--train"]) == 0
    assert seen == [("fcnn.sweep", ["--impl", "im2col", "-x"]), ("fcnn.viz", ["--run", "r", "--train"])]


@pytest.mark.slow  # three CLI processes (24 s); by default the property is test_train's in-process resume
# equality plus test_checkpoint's SIGKILL during saves
def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    from fcnn import checkpoint

    args = ["train", "--epochs", "1", "--batch-size", "32", "--checkpoint-every", "5", "--seed", "3", "--no-progress"]
    killed, full = str(tmp_path / "killed"), str(tmp_path / "full")
    proc = subprocess.Popen([sys.executable, "-m", "fcnn.cli", *args, "--out", killed], env=SUBPROCESS_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while checkpoint.latest(killed) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    step_at_kill = checkpoint.load_latest(killed).step
    resumed = _run_cli("train", "--resume", killed)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = _run_cli(*args, "--out", full)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert TEST_ACC.findall(resumed.stdout) == TEST_ACC.findall(uninterrupted.stdout)
    *_, pa, sa, step_a = load_run(killed)
    *_, pb, sb, step_b = load_run(full)
    assert step_a == step_b > step_at_kill
    chex.assert_trees_all_equal((pa, sa), (pb, sb))  # bitwise
    assert _untimed(os.path.join(killed, "metrics.jsonl")) == _untimed(os.path.join(full, "metrics.jsonl"))


def _train_acc(tmp_path, name, *extra):
    run = str(tmp_path / name)
    assert cli.main(["train", "--out", run, "--no-progress", *extra]) == 0
    return run


@pytest.mark.slow  # a second training job; the conv impls' agreement is test_conv's
def test_custom_vjp_conv_trains_to_the_same_accuracy_as_lax(tmp_path, capsys):
    short = ["--epochs", "2", "--seed", "1"]
    _train_acc(tmp_path, "lax", *short, "--impl", "lax")
    acc_lax = float(TEST_ACC.findall(capsys.readouterr().out)[-1])
    _train_acc(tmp_path, "vjp", *short, "--impl", "custom_vjp")
    acc_vjp = float(TEST_ACC.findall(capsys.readouterr().out)[-1])
    assert acc_lax > 0.8
    assert abs(acc_vjp - acc_lax) <= 0.01  # same math; rounding may flip an example or two


@pytest.mark.slow  # the whole 25-epoch quickstart job (README measures it); test_train_prints_test_accuracy_and_eval_reproduces_it trains by default
def test_default_job_reaches_98_percent_on_digits(tmp_path, capsys):
    run = _train_acc(tmp_path, "default")
    acc = float(TEST_ACC.findall(capsys.readouterr().out)[-1])
    assert acc >= 0.98
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"] == "lenet5" and config["dataset"] == "digits"


def test_out_never_destroys_what_is_there(tmp_path, capsys):
    """--out on a file, on a folder with the user's own config.json, on a run: one line, nothing touched."""
    (tmp_path / "f.txt").write_text("mine")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "config.json").write_text('{"mine": 1}')
    short = ["train", "--epochs", "1", "--max-steps", "2", "--no-progress", "--out"]
    for out, needle in ((tmp_path / "f.txt", "is a file, not a directory"),
                        (tmp_path / "proj", "does not hold an fcnn run (it holds 'config.json')")):
        for extra in ([], ["--overwrite"]):
            assert cli.main(short + [str(out)] + extra) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and needle in err[0], err
    assert (tmp_path / "f.txt").read_text() == "mine"
    assert json.load(open(tmp_path / "proj" / "config.json")) == {"mine": 1}
    run = str(tmp_path / "run")
    assert cli.main(short + [run]) == 0
    capsys.readouterr()
    assert cli.main(short + [run]) == 2
    assert "holds an fcnn run (it already holds checkpoints): resume it" in capsys.readouterr().err
    assert cli.main(short + [run, "--overwrite", "--seed", "4"]) == 0
    assert json.load(open(os.path.join(run, "config.json")))["seed"] == 4
    assert cli.main(["train", "--resume", run, "--overwrite"]) == 2
    assert "--overwrite cannot be combined with --resume" in capsys.readouterr().err
    # extending the run (1 -> 2 epochs, from its checkpoint at step 2) is said and recorded in metrics.jsonl
    assert cli.main(["train", "--resume", run, "--epochs", "2", "--max-steps", "3", "--no-progress"]) == 0
    assert f"fcnn train: extending {run} from 1 to 2 epochs" in capsys.readouterr().out
    lines = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert lines == [{"event": "extended", "step": 2, "from_epochs": 1, "to_epochs": 2}]
    assert json.load(open(os.path.join(run, "config.json")))["epochs"] == 2


def test_an_unusable_out_is_refused_before_the_data_is_loaded(tmp_path, capsys, monkeypatch):
    """--out below a regular file, under a directory fcnn may not write in, a broken link, an empty path, with
    or without --overwrite: status 2, one line naming the path, and the data never loaded."""
    def no_data(config):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(cli, "load_data", no_data)
    (tmp_path / "f.txt").write_text("mine")
    (tmp_path / "ro").mkdir()
    os.symlink(str(tmp_path / "nowhere"), str(tmp_path / "link"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("ro") and real_access(p, mode))
    cases = [(tmp_path / "f.txt" / "sub", r"run_dir '.*f\.txt/sub' cannot be created: '.*f\.txt' is not a directory"),
             (tmp_path / "ro" / "run", r"run_dir '.*ro/run' cannot be created: '.*ro' is not writable"),
             (tmp_path / "ro", r"run_dir '.*ro' is not writable"),
             (tmp_path / "link", r"run_dir '.*link' is a broken symbolic link"),
             ("", r"run_dir must be a non-empty path")]
    for out, pattern in cases:
        for extra in ([], ["--overwrite"]):
            assert cli.main(["train", "--epochs", "1", "--no-progress", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("fcnn: error: ") and re.search(pattern, err[0]), err
    assert (tmp_path / "f.txt").read_text() == "mine" and os.listdir(tmp_path / "ro") == []


def test_resume_names_the_flags_as_the_command_spells_them(tmp_path, capsys):
    from fcnn.run import TrainConfig, write_config

    write_config(str(tmp_path), TrainConfig())
    for flags, named in ((["--lr", "0.1"], "--lr"), (["--l2", "0.1", "--dtype-policy", "bf16"], "--dtype-policy, --l2"),
                         (["--precision", "bf16"], "--dtype-policy")):
        assert cli.main(["train", "--resume", str(tmp_path), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith(f"only --epochs, --parallel, --devices, --data-dir may be given with it, got {named}"), err


def test_train_reads_a_self_consistent_idx_subset_and_says_how_many_images(tmp_path, capsys):
    from _formats import write_mnist

    write_mnist(str(tmp_path / "data"), n_train=8, n_test=5)
    run = str(tmp_path / "run")
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                     "--batch-size", "4", "--no-progress", "--out", run]) == 0
    out = capsys.readouterr().out
    assert "dataset mnist (8 train / 5 test)" in out
    assert "note: mnist has 8 train / 5 test images, not the official 60000 / 10000" in out
    acc = float(TEST_ACC.search(out).group(1))
    assert "5 examples" in out and round(acc * 5, 4) == round(acc * 5)  # a count of the 5 test images


def test_a_run_records_its_data_folder_absolute_so_eval_reads_it_from_anywhere(tmp_path, capsys, monkeypatch):
    """--data-dir given relative: config.json records the absolute folder, and fcnn eval run from
    another working directory reads the same files (it read ./data there, another set, or failed)."""
    from _formats import write_mnist

    write_mnist(str(tmp_path / "data"), n_train=8, n_test=5)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--dataset", "mnist", "--data-dir", "data", "--epochs", "1", "--batch-size", "4",
                     "--no-progress", "--out", "run"]) == 0
    trained = TEST_ACC.search(capsys.readouterr().out).group(0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"] == str(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    write_mnist(str(elsewhere / "data"), n_train=8, n_test=7, seed=1)  # a decoy at the same relative path
    monkeypatch.chdir(elsewhere)
    assert cli.main(["eval", "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert TEST_ACC.search(out).group(0) == trained and "5 examples" in out


def test_precision_and_dtype_policy_together_are_refused(tmp_path, capsys):
    """--precision is the deprecated name of --dtype-policy; given both, it overrode the other silently."""
    assert cli.main(["train", "--precision", "bf16", "--dtype-policy", "f32", "--out", str(tmp_path / "r")]) == 2
    assert "--precision is the deprecated name of --dtype-policy: give one of them" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_whose_data_folder_moved_is_evaluated_and_resumed_with_data_dir(tmp_path, capsys):
    """Before: fcnn eval had no --data-dir and --resume refused it (and a hand-edited config.json then
    'differed from the checkpoint'), so a moved dataset folder made the run unusable."""
    from _formats import write_mnist

    write_mnist(str(tmp_path / "data"), n_train=8, n_test=5)
    run = str(tmp_path / "run")
    argv = ["train", "--dataset", "mnist", "--epochs", "2", "--batch-size", "4", "--no-progress"]
    assert cli.main(argv + ["--data-dir", str(tmp_path / "data"), "--out", run, "--max-steps", "2"]) == 0
    trained = TEST_ACC.search(capsys.readouterr().out).group(0)
    os.rename(tmp_path / "data", tmp_path / "moved")
    assert cli.main(["eval", "--run", run]) == 2
    assert "moved" not in capsys.readouterr().err  # the recorded folder is gone: an error, not another dataset
    assert cli.main(["eval", "--run", run, "--data-dir", str(tmp_path / "moved")]) == 0
    assert TEST_ACC.search(capsys.readouterr().out).group(0) == trained  # the same files, the same score
    assert cli.main(["train", "--resume", run, "--data-dir", str(tmp_path / "moved")]) == 0
    assert json.loads(open(os.path.join(run, "config.json")).read())["data_dir"] == str(tmp_path / "moved")
    assert [json.loads(x)["step"] for x in open(os.path.join(run, "metrics.jsonl"))] == [2, 4]
