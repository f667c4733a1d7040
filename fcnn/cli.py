"""The ``fcnn`` command.

    fcnn train   [--model lenet5] [--dataset digits] [--epochs N] ... [--out RUN_DIR]
    fcnn train   --task segment|denoise|reconstruct|regress   another task (its tuned defaults: run.TASK_DEFAULTS)
    fcnn train   --tensorboard                         also write TensorBoard event files into the run dir
    fcnn train   --parallel pmap|sharding [--devices D]   data parallel over D devices (default: all)
    fcnn train   --resume RUN_DIR [--epochs N]        continue a run from its latest checkpoint
    fcnn eval    --run RUN_DIR                         rebuild the model from config.json, evaluate
    fcnn summary --model NAME [--in-shape 1,28,28,1]   layer table: shapes, parameters, FLOPs
    fcnn gradcheck ...  /  fcnn viz ...                 handed to fcnn.gradcheck / fcnn.viz

Bad arguments print one line ``fcnn: error: ...`` on stderr and exit with status 2
(set FCNN_DEBUG=1 for the traceback). A diverged run exits with status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from typing import List, Optional

from fcnn import _checks
from fcnn.run import (RESUME_MAY_CHANGE, TrainConfig, build_model, check_model_name, check_new_run_dir, free_run_dir,
                      load_data, load_run, make_task, read_config)
from fcnn.data import official_size_note
from fcnn.datafiles import resolved_data_dir
from fcnn.step import DTYPE_POLICIES

__all__ = ["main", "build_parser", "build_model", "load_run"]

_DEFAULTS = TrainConfig()
_DELEGATED = {"gradcheck": "fcnn.sweep", "viz": "fcnn.viz"}


class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    """argparse type: the text of a positive int (the rule is ``_checks.positive_int``'s)."""
    try:
        return _checks.positive_int(int(text), "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None


def _shape(text: str):
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated ints like 1,28,28,1, got {text!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"must be 4 positive ints (n,h,w,c), got {text!r}")
    return dims


# train options: (flag, TrainConfig field, type, help); every default comes from TrainConfig
_TRAIN_OPTIONS = [
    ("--task", "task", str, "classify, segment, denoise, reconstruct or regress (fcnn.tasks; the other "
                            "defaults then come from run.TASK_DEFAULTS)"),
    ("--model", "model", str, "model name from fcnn.models"),
    ("--dataset", "dataset", str, "dataset name from fcnn.data"),
    ("--data-dir", "data_dir", str, "where file datasets are read (default: $FCNN_DATA_DIR, else ~/.cache/fcnn)"),
    ("--impl", "impl", str, "convolution implementation: auto (measured per platform and shape) or one of fcnn.ops.CONV_IMPLS"),
    ("--pool-impl", "pool_impl", str, "max-pool implementation: auto or one of fcnn.ops.POOL_IMPLS"),
    ("--epochs", "epochs", _positive_int, "passes over the training set"),
    ("--batch-size", "batch_size", _positive_int, "examples per step"),
    ("--optimizer", "optimizer", str, "sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw"),
    ("--lr", "learning_rate", float, "peak learning rate"),
    ("--schedule", "schedule", str, "constant, cosine, warmup_cosine, step"),
    ("--momentum", "momentum", float, "momentum / nesterov beta"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay (adamw only; default: 1e-4)"),
    ("--l2", "l2", float, "L2 penalty coefficient on kernels (added to the loss)"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing eps in [0, 1)"),
    ("--dtype-policy", "dtype_policy", str, "f32, or bf16 (bf16 forward, f32 master params and loss)"),
    ("--augment-shift", "augment_shift", int, "random translation of training images, pixels (0: off)"),
    ("--seed", "seed", int, "seed: init, data order and dropout depend only on it"),
    ("--steps-per-call", "steps_per_call", _positive_int, "train steps per dispatch (lax.scan)"),
    ("--parallel", "parallel", str, "none, pmap or sharding: data parallel over --devices devices"),
    ("--devices", "devices", _positive_int, "devices for --parallel pmap/sharding (default: all)"),
    ("--checkpoint-every", "checkpoint_every", _positive_int,
     "checkpoint every N steps (also each epoch; default: each epoch only)"),
    ("--keep", "keep", _positive_int, "checkpoints to keep"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fcnn", description="Functional convolutional networks in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,summary,gradcheck,viz}")
    sub.required = True
    tr = sub.add_parser("train", help="train a model; writes a run directory")
    for flag, field, typ, text in _TRAIN_OPTIONS:
        default = getattr(_DEFAULTS, field)  # None: the help text says what happens
        tr.add_argument(flag, dest=field, type=typ, default=None,
                        help=text if default is None else f"{text} (default: {default})")
    tr.add_argument("--out", default=None, help="run directory (default: runs/<model>-<dataset>[-N], a new one)")
    tr.add_argument("--resume", metavar="RUN_DIR", default=None,
                    help="continue RUN_DIR from its latest checkpoint with its config.json "
                         "(only --epochs, --parallel, --devices and --data-dir may change)")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace the fcnn run --out holds (never a directory with other files)")
    tr.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this global step")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a TTY or $CI)")
    tr.add_argument("--tensorboard", action="store_true",
                    help="write every logged scalar as TensorBoard events in the run dir (needs tensorboardX)")
    tr.add_argument("--precision", dest="precision", default=None, help=argparse.SUPPRESS)  # old --dtype-policy
    ev = sub.add_parser("eval", help="evaluate a run directory's latest checkpoint on the test set")
    ev.add_argument("--run", required=True, metavar="RUN_DIR", help="a directory written by fcnn train")
    ev.add_argument("--data-dir", default=None, help="read the dataset from here (default: the folder the run recorded)")
    sm = sub.add_parser("summary", help="print a model's layer table")
    sm.add_argument("--model", default=_DEFAULTS.model, help="model name from fcnn.models")
    sm.add_argument("--in-shape", type=_shape, default=None, help="input shape n,h,w,c (default: the model's)")
    sm.add_argument("--num-classes", type=_positive_int, default=10)
    for name in _DELEGATED:
        sub.add_parser(name, help=f"see: fcnn {name} --help", add_help=False)
    return parser


def _print_test(result: dict, ds=None) -> None:
    """``test <metric>: value`` for each of the task's metrics (classify: ``test accuracy: ...``)."""
    for k, v in result.items():
        if k not in ("loss", "n"):
            print(f"test {k.replace('_', ' ')}: {v:.4f}  (test loss {result['loss']:.4f}, {result['n']} examples)")
    if ds is not None and ds.name.endswith("-denoise"):
        from fcnn.dense_data import input_psnr

        print(f"noisy input psnr: {input_psnr(ds):.4f} dB (the test inputs against their clean targets)")


def _train(args) -> int:
    from fcnn.parallel import check_parallel
    from fcnn.train import fit

    given = {field: getattr(args, field) for _, field, _, _ in _TRAIN_OPTIONS if getattr(args, field) is not None}
    if args.precision is not None:  # the deprecated spelling of --dtype-policy
        if "dtype_policy" in given:
            raise ValueError("--precision is the deprecated name of --dtype-policy: give one of them")
        given["dtype_policy"] = _checks.choice(args.precision, DTYPE_POLICIES, "precision")
        print("fcnn: warning: --precision is deprecated; use --dtype-policy", file=sys.stderr)
    if args.resume is not None:
        if args.out is not None or args.overwrite:
            raise ValueError(f"--{'out' if args.out is not None else 'overwrite'} cannot be combined with --resume "
                             f"(the run directory is RUN_DIR, continued)")
        extra = sorted(set(given) - set(RESUME_MAY_CHANGE))
        if extra:
            flag = {field: flag for flag, field, _, _ in _TRAIN_OPTIONS}  # learning_rate -> --lr
            raise ValueError(f"--resume takes the run's settings from RUN_DIR/config.json; only "
                             f"{', '.join(flag[f] for f in RESUME_MAY_CHANGE)} may be given with it, got "
                             f"{', '.join(flag[f] for f in extra)}")
        saved = read_config(args.resume)
        config = dataclasses.replace(saved, **given)
        if "data_dir" in given:  # the dataset's files moved: recorded absolute, as a new run's
            config = dataclasses.replace(config, data_dir=resolved_data_dir(config.dataset, config.data_dir))
        run_dir = args.resume
        if config.epochs > saved.epochs:
            print(f"fcnn train: extending {run_dir} from {saved.epochs} to {config.epochs} epochs (recorded in "
                  f"metrics.jsonl)", flush=True)
    else:
        config = TrainConfig.for_task(given.pop("task", _DEFAULTS.task), **given)
        # the folder the data is read from, absolute: fcnn eval then reads it from any working directory
        config = dataclasses.replace(config, data_dir=resolved_data_dir(config.dataset, config.data_dir))
        run_dir = free_run_dir(config) if args.out is None else args.out
        check_new_run_dir(run_dir, overwrite=args.overwrite, dry_run=True)  # before loading data; fit replaces
    check_model_name(config.model)
    check_parallel(config.parallel, config.devices, config.batch_size)  # before loading data
    ds = load_data(config)
    model = build_model(config, ds.num_classes)
    note = official_size_note(ds)
    if note:
        print(note, flush=True)
    where = "" if config.parallel == "none" else f", parallel {config.parallel} over {config.devices or 'all'} devices"
    where += "" if config.task == "classify" else f", task {config.task}"
    print(f"fcnn train: model {config.model} ({config.impl}/{config.pool_impl}), dataset {config.dataset} "
          f"({len(ds.x_train)} train / {len(ds.x_test)} test), seed {config.seed}{where}, run dir {run_dir}", flush=True)
    result = fit(model, ds, config, run_dir=run_dir, resume=args.resume is not None, overwrite=args.overwrite,
                 max_steps=args.max_steps, progress=False if args.no_progress else None, tensorboard=args.tensorboard)
    _print_test(result.test, ds)
    return 0


def _eval(args) -> int:
    from fcnn.step import evaluate, num_outputs

    config, ds, model, params, state, step = load_run(args.run, data_dir=args.data_dir)
    task = make_task(config, num_outputs(model, params, state, ds.x_test.shape))
    result = evaluate(model, params, state, ds.x_test, ds.y_test, config.eval_batch_size, task=task,
                      dtype_policy=config.dtype_policy)
    task_note = "" if config.task == "classify" else f", task {config.task}"
    print(f"run {args.run}: model {config.model}, dataset {config.dataset}{task_note}, checkpoint step {step}")
    _print_test(result, ds)
    return 0


def _summary(args) -> int:
    from fcnn import models
    from fcnn.summary import summary

    check_model_name(args.model)
    model = models.get_model(args.model, num_classes=args.num_classes)
    in_shape = args.in_shape or tuple(models.input_shape(args.model))
    out = summary(model, in_shape)
    if out is not None:
        print(out)
    return 0


def _delegate(name: str, argv: List[str]) -> int:
    try:
        module = importlib.import_module(_DELEGATED[name])
    except ModuleNotFoundError as e:
        if e.name != _DELEGATED[name]:
            raise
        print(f"fcnn: error: 'fcnn {name}' needs the module {_DELEGATED[name]}, which this installation does not have",
              file=sys.stderr)
        return 2
    rc = module.cli_main(argv)
    return 0 if rc is None else int(rc)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fcnn`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in _DELEGATED:
            return _delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        return {"train": _train, "eval": _eval, "summary": _summary}[args.command](args)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    except FloatingPointError as e:  # TrainingDivergedError
        return _error(e, 1)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:  # bad arguments, paths, files
        return _error(e, 2)
    except ImportError as e:  # an optional package a flag needs (--tensorboard: tensorboardX; viz: matplotlib)
        return _error(e, 2)
    except OSError as e:  # a run directory not writable, a disk full (train.CheckpointWriteError)
        return _error(e, 1)


def _error(e: BaseException, status: int) -> int:
    """Print ``fcnn: error: <first line>`` (the traceback with FCNN_DEBUG=1) and return ``status``."""
    if os.environ.get("FCNN_DEBUG"):
        raise e
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"fcnn: error: {msg}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
