"""What did the digits model learn? A gallery of fcnn.viz pictures of the default `fcnn train` job.

    python experiments/interpretability.py [--epochs 25] [--train-dir runs/interpretability] [--out docs]
    python experiments/interpretability.py --run RUN_DIR [--out docs]     (pictures of an existing run)
    python experiments/interpretability.py --quick --out /tmp/x            (1 epoch, 2 digits: a smoke test)

Trains LeNet-5 on the bundled digits with the TrainConfig defaults (only --epochs may change) into
--train-dir (--quick: a new temporary directory unless given), or takes the run written by
`fcnn train` at --run. Every single picture is made by `fcnn viz`'s own code (``fcnn.viz.render``
on the run loaded once), and the exact command is written next to it; one overview figure puts
several test digits side by side with their saliency, SmoothGrad, Grad-CAM and occlusion maps, and
a table says how much of each map's mass falls on the digit's ink for the trained and an untrained
network. Writes OUT/interpretability.md and OUT/img/interp_*.png.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from types import SimpleNamespace

import jax
import numpy as np

from fcnn import checkpoint, data, figures, viz
from fcnn.run import TrainConfig, build_model, load_run, split_seed
from fcnn.step import predict
from fcnn.train import fit

DEFAULTS = TrainConfig()
TRAIN_DIR = os.path.join("runs", "interpretability")
INK = 0.25  # a pixel is ink when its raw value (0..1) is above this


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="an existing run directory (written by fcnn train) to draw")
    p.add_argument("--train-dir", default=None, help=f"where to train when --run is not given (default "
                                                      f"{TRAIN_DIR}; --quick: a new temporary directory)")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="training epochs (TrainConfig default)")
    p.add_argument("--index", type=int, default=None, help="test image for the single pictures (default: the "
                                                           "first test 7, or image 0)")
    p.add_argument("--examples", type=int, default=5, help="digits in the overview figure and ink table rows")
    p.add_argument("--table-images", type=int, default=100, help="test images averaged in the ink table")
    p.add_argument("--seed", type=int, default=0, help="SmoothGrad noise and the untrained network's init")
    p.add_argument("--out", default=None, help="writes OUT/interpretability.md and OUT/img/interp_*.png (default "
                                               "docs; --quick: a new temporary directory)")
    p.add_argument("--quick", action="store_true", help="1 epoch, 2 overview digits, 8 table images")
    return p.parse_args(argv)


def _cmd(argv):
    return " ".join(shlex.quote(a) for a in argv)


def _train(args) -> str:
    run = args.train_dir
    if os.path.isdir(run) and checkpoint.latest(run) is not None:
        raise SystemExit(f"{run} already holds a trained run: draw it with --run {run}, or pick another --train-dir")
    config = TrainConfig(epochs=args.epochs)
    ds = data.load(config.dataset)
    _check_index(args, ds)
    print(f"training {config.model} on {config.dataset} for {config.epochs} epochs into {run}", flush=True)
    fit(build_model(config, ds.num_classes), ds, config, run_dir=run, progress=False, verbose=False)
    return run


def _viz(run, loaded, what, out_png, index=None, layer=None):
    """One picture exactly as `fcnn viz` draws it (``fcnn.viz.render``, the command's own code, on the
    run loaded once); returns the command line, plus any warning it printed as a comment line."""
    argv = ["--run", run, "--what", what]
    argv += [] if index is None else ["--index", str(index)]
    argv += [] if layer is None else ["--layer", layer]
    argv += ["--out", out_png, "--overwrite"]  # the gallery's pictures exist once drawn: the command replaces them
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        line = viz.relay_blank_warnings(viz.render, run, what, out_png, index=0 if index is None else index,
                                        layer=layer, loaded=loaded, overwrite=True)  # this gallery's own pictures
    print(line)
    sys.stderr.write(err.getvalue())
    return "\n".join(["fcnn viz " + _cmd(argv)] + ["# " + w for w in err.getvalue().splitlines()])


def _ink(ds, x):
    raw = np.asarray(x)[..., 0] * float(ds.std[0]) + float(ds.mean[0])  # back to 0..1
    return raw > INK


def _maps(model, params, state, x, y, cam_layer, key):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", viz.BlankMapWarning)
        return {
            "saliency": viz.saliency(model, params, state, x, y),
            "SmoothGrad": viz.smoothgrad(model, params, state, x, y, key=key),  # n=16, as `fcnn viz`
            "Grad-CAM": viz.grad_cam(model, params, state, x, y, cam_layer),
            "occlusion": np.maximum(viz.occlusion(model, params, state, x, y), 0.0),
        }


def _overview(path, ds, model, params, state, idx, cam_layer, key):
    """Rows: test digits; columns: the input and its four maps (each scaled to its own max)."""
    cols = ["input", "saliency", "SmoothGrad", "Grad-CAM", "occlusion"]
    fig = figures.figure((1.3 * len(cols), 1.35 * len(idx)), dpi=80)
    axes = fig.subplots(len(idx), len(cols), squeeze=False)
    all_maps = []
    for row, i in zip(axes, idx):
        x, y = ds.x_test[i], int(ds.y_test[i])
        maps = _maps(model, params, state, x, y, cam_layer, key)
        all_maps.append(maps)
        row[0].imshow(x[..., 0], cmap="gray")
        row[0].set_ylabel(f"#{i}: a {y}", fontsize=8)
        for ax, name in zip(row[1:], cols[1:]):
            ax.imshow(maps[name], cmap="inferno", vmin=0)
        for ax, name in zip(row, cols):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == idx[0]:
                ax.set_title(name, fontsize=8)
    fig.tight_layout(pad=0.3)
    figures.save_figure(fig, path, dpi=80)
    return all_maps


def _ink_table(ds, model, trained, untrained, idx, cam_layer, key):
    """Mean share of each map's mass on ink pixels, trained vs untrained, over test images idx."""
    rows = {}
    for label, (params, state) in (("trained", trained), ("untrained", untrained)):
        acc = {}
        for i in idx:
            x, y = ds.x_test[i], int(ds.y_test[i])
            ink = _ink(ds, x)
            for name, m in _maps(model, params, state, x, y, cam_layer, key).items():
                acc.setdefault(name, []).append(m[ink].sum() / m.sum() if m.sum() > 0 else 0.0)
        rows[label] = {k: float(np.mean(v)) for k, v in acc.items()}
    area = float(np.mean([_ink(ds, ds.x_test[i]).mean() for i in idx]))
    return rows, area


def _compare(t, u):
    """Words for a trained share t against an untrained share u."""
    return "about the same as" if abs(t - u) < 0.05 else ("more than" if t > u else "less than")


def _top_confusions(m, k=3):
    off = [(int(m[t, p]), t, p) for t in range(m.shape[0]) for p in range(m.shape[1]) if t != p and m[t, p]]
    return sorted(off, reverse=True)[:k]


def _settle(args) -> None:
    """Refuse bad counts before any work; --quick's small sizes; the training directory and --out when
    none is given (--quick: new temporary directories, said on stdout, never docs/'s published gallery;
    ``args.temp_run``: the training directory to remove at the end)."""
    for flag, value, low in (("--epochs", args.epochs, 1), ("--examples", args.examples, 1),
                             ("--table-images", args.table_images, 1), ("--index", args.index, 0)):
        if value is not None and value < low:
            raise SystemExit(f"{flag} must be an integer >= {low}, got {value}")
    if args.quick:
        args.epochs, args.examples, args.table_images = 1, 2, 8
    args.temp_run = None
    if args.train_dir is None:
        args.train_dir = args.temp_run = tempfile.mkdtemp(prefix="fcnn-interp-quick-") if args.quick else TRAIN_DIR
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="fcnn-interp-quick-out-") if args.quick else "docs"
        if args.quick:
            print(f"--quick without --out: writing into {args.out}", flush=True)


def _check_index(args, ds) -> None:
    """``--index`` must name a test image of the run's dataset (checked before training or drawing)."""
    if args.index is not None and not args.index < len(ds.y_test):
        raise SystemExit(f"--index must be a test image, 0 <= index < {len(ds.y_test)}, got {args.index}")


def _png(img_dir, name):
    return os.path.join(img_dir, f"interp_{name}.png")


def _load(run, args) -> SimpleNamespace:
    """The run loaded once, the test image of the single pictures, the Grad-CAM layer and the layer names:
    the namespace the pictures, the measurements and the page are written from."""
    loaded = load_run(run)
    config, ds, model, params, state, step = loaded
    _check_index(args, ds)
    sevens = np.flatnonzero(ds.y_test == 7)
    index = args.index if args.index is not None else (int(sevens[0]) if len(sevens) else 0)
    names = viz.layer_names(model)
    return SimpleNamespace(run=run, loaded=loaded, config=config, ds=ds, model=model, params=params, state=state,
                           step=step, img_dir=os.path.join(args.out, "img"), index=index, y_index=int(ds.y_test[index]),
                           cam_layer=viz.default_cam_layer(model, params, state, ds.x_test[index]), names=names,
                           convs=[n for n in names if n.endswith(".Conv2D")], seed=args.seed)


def _pictures(g) -> dict:
    """Every single picture, drawn by `fcnn viz`'s own code: {name: the command that draws it}."""
    cmds = {"filters": _viz(g.run, g.loaded, "filters", _png(g.img_dir, "filters"))}
    if len(g.convs) > 1:
        cmds["filters2"] = _viz(g.run, g.loaded, "filters", _png(g.img_dir, "filters2"), layer=g.convs[1])
    for what in ("features", "saliency", "smoothgrad", "gradcam", "occlusion"):
        cmds[what] = _viz(g.run, g.loaded, what, _png(g.img_dir, what), index=g.index)
    cmds["curves"] = _viz(g.run, g.loaded, "curves", _png(g.img_dir, "curves"))
    cmds["confusion"] = _viz(g.run, g.loaded, "confusion", _png(g.img_dir, "confusion"))
    return cmds


def _measure(g, examples, table_images) -> None:
    """Draws the overview figure and adds to ``g`` what the page says: the ink table, the overview's
    Grad-CAM peaks off the ink, accuracy and confusions, the curves, and the layers' facts."""
    ds, model, params, state = g.ds, g.model, g.params, g.state
    # overview: the first test image of each of `examples` classes spread over 0..9
    g.classes = np.linspace(0, ds.num_classes - 1, examples).round().astype(int)
    g.idx = [int(np.flatnonzero(ds.y_test == c)[0]) for c in g.classes]
    key = jax.random.PRNGKey(g.seed)
    over = _overview(_png(g.img_dir, "overview"), ds, model, params, state, g.idx, g.cam_layer, key)
    g.cam_off_ink = [int(ds.y_test[i]) for i, m in zip(g.idx, over)
                     if not _ink(ds, ds.x_test[i]).ravel()[np.argmax(m["Grad-CAM"])]]
    _, p0, s0 = model.init(jax.random.PRNGKey(g.seed + 1), (1,) + ds.x_test.shape[1:])
    g.t_idx = list(range(min(table_images, len(ds.x_test))))
    g.table, g.ink_area = _ink_table(ds, model, (params, state), (p0, s0), g.t_idx, g.cam_layer, key)

    # facts for the text
    g.pred = np.asarray(predict(model, params, state, ds.x_test, dtype_policy=g.config.dtype_policy,
                                batch_size=512).argmax(-1))
    g.acc = float((g.pred == ds.y_test).mean())
    g.conf = viz.confusion_matrix(ds.y_test, g.pred, ds.num_classes)
    g.tops = _top_confusions(g.conf)
    g.hist = viz.curves(g.run)


def _layer_facts(g) -> None:
    """Adds to ``g``: each conv layer's correlation with its initial kernels and the feature maps'
    facts (the Grad-CAM layer's shape and silent channels, the normalised background)."""
    ds, model = g.ds, g.model
    conv_idx = [i for i, n in enumerate(g.names) if n.endswith(".Conv2D")]
    k_init, _ = split_seed(g.config.seed)  # the key fcnn.train.fit drew the initial params with
    _, p_init, _ = model.init(k_init, (1,) + ds.x_test.shape[1:])
    g.corr = [float(np.corrcoef(np.ravel(p_init[i]["w"]), np.ravel(g.params[i]["w"]))[0, 1]) for i in conv_idx]
    fmaps = viz.feature_maps(model, g.params, g.state, ds.x_test[g.index])
    g.a_shape = fmaps[g.cam_layer][1].shape
    g.silent = int(np.sum(np.all(fmaps[g.cam_layer][1] == 0, axis=(0, 1))))
    g.background = float(-ds.mean[0] / ds.std[0])


def _section(g, title, name, text) -> list:
    return [f"## {title}\n", f"![{title}](img/interp_{name}.png)\n", text + "\n", f"```\n{g.cmds[name]}\n```\n"]


def _intro(g, script, seconds) -> list:
    config = g.config
    return [
        "# Looking inside the digits model\n",
        f"Made by `{script.strip()}` on {datetime.date.today()} ({jax.devices()[0].platform}, "
        f"{seconds:.0f} s). The run: `{config.model}` on `{config.dataset}`, "
        f"{'TrainConfig defaults' if config == TrainConfig(epochs=config.epochs) else 'its config.json'} "
        f"with {config.epochs} epochs (checkpoint step {g.step}), test accuracy {g.acc:.4f} "
        f"({len(g.ds.x_test)} images). Each single picture below was written by the `fcnn viz` command "
        f"under it (run from the repository root; `--run {g.run}` is the run directory); "
        f"`python -m fcnn.cli viz ...` is the same without the console script.\n",
        f"The single pictures explain test image {g.index} (a {g.y_index}); saliency, SmoothGrad, Grad-CAM and "
        f"occlusion explain its true class. Maps are drawn on `[0, max]` of each map, dark = 0.\n"]


def _layer_sections(g) -> list:
    """The filters of the conv layers and the feature maps."""
    convs, corr = g.convs, g.corr
    w = _section(g, "Filters of the first conv layer", "filters",
                 f"The {convs[0]} kernels, one tile each, every tile min-max scaled on its own (so only the pattern, "
                 f"not the size, of a kernel is comparable). Their correlation with the random initial kernels is "
                 f"{corr[0]:.2f}" + (": they look like noise because they mostly still are. The inputs are 8x8 "
                                     "digits blown up to 28x28, with no detail finer than a few pixels, so the "
                                     "fine-grained part of a 5x5 kernel hardly changes any output and gets little "
                                     "gradient, and with `l2=0` (the default) nothing pulls it to zero. What the "
                                     "kernels do is seen better in the feature maps." if corr[0] > 0.8 else "."))
    if "filters2" in g.cmds:
        w += _section(g, "Filters of the second conv layer", "filters2",
                      f"{convs[1]}: one tile per (output, input) channel pair, row-major over outputs (correlation "
                      f"with the initial kernels: {corr[1]:.2f}). Single tiles are hard to read; the feature maps and "
                      f"the maps below look at what the layers respond to instead.")
    return w + _section(
        g, "Feature maps", "features",
        f"The output of every top-level layer for test image {g.index} (a {g.y_index}), up to 8 channels per row, "
        f"vectors as bar charts. The first conv layer's maps are smooth copies of the digit, each stressing "
        f"other strokes or edges; the thin frame along their border is SAME padding (the pad value 0 is the "
        f"mean pixel, brighter than the normalised background {g.background:.2f}, so the kernels see an edge "
        f"there). Each max pool halves the maps; {g.silent} of the {g.a_shape[-1]} channels of "
        f"{g.names[g.cam_layer]} {'is' if g.silent == 1 else 'are'} zero everywhere for this image. The last row "
        f"is the 10 logits; the largest is class {int(g.pred[g.index])}.")


def _map_sections(g) -> list:
    """Saliency, SmoothGrad, Grad-CAM and occlusion, each against the ink and an untrained network."""
    tr, un, ink_area, y_index = g.table["trained"], g.table["untrained"], g.ink_area, g.y_index
    spread = tr["saliency"] < ink_area + 0.15
    w = _section(g, "Saliency", "saliency",
                 f"`|d logit_{y_index} / d x|` per pixel: which pixels would move the class score most if changed a "
                 f"little. " + ("For this LeNet on these blurry digits it is speckle spread over the whole frame: "
                                if spread else "It sits mostly on the strokes: ") +
                 f"over test images 0..{g.t_idx[-1]} it puts {tr['saliency']:.0%} of its mass on ink that covers "
                 f"{ink_area:.0%} of the pixels, {_compare(tr['saliency'], un['saliency'])} an untrained network's "
                 f"saliency ({un['saliency']:.0%}). A raw gradient says what is locally sensitive, which need not be "
                 f"what the decision rests on.")
    w += _section(g, "SmoothGrad", "smoothgrad",
                  f"The saliency averaged over 16 copies of the image with Gaussian noise (15% of its value range) "
                  f"added, which calms the pixel-to-pixel speckle of a ReLU network's gradient. Its share on ink: "
                  f"{tr['SmoothGrad']:.0%}, {_compare(tr['SmoothGrad'], tr['saliency'])} the plain saliency and "
                  f"{_compare(tr['SmoothGrad'], un['SmoothGrad'])} an untrained network's ({un['SmoothGrad']:.0%}).")
    a_shape, cam_off_ink = g.a_shape, g.cam_off_ink
    w += _section(g, "Grad-CAM", "gradcam",
                  f"Grad-CAM at `{g.names[g.cam_layer]}` (the default: the last feature map before it is pooled, "
                  f"here {a_shape[0]}x{a_shape[1]}x{a_shape[2]}), resized to 28x28: each channel weighted by the mean "
                  f"of the class logit's gradient over it, summed, negative parts cut. It says *where* at that coarse "
                  f"resolution, and it may point at background that matters: in the overview below, the peak of "
                  f"the map lies off the ink for {len(cam_off_ink)} of the {len(g.idx)} digits"
                  f"{' (' + ', '.join(f'the {c}' for c in cam_off_ink) + ')' if cam_off_ink else ''}. "
                  f"{tr['Grad-CAM']:.0%} of its mass is on ink, "
                  f"{_compare(tr['Grad-CAM'], un['Grad-CAM'])} an untrained network's ({un['Grad-CAM']:.0%}). A "
                  f"Grad-CAM that is zero everywhere makes `fcnn viz` print a warning instead of leaving a silently "
                  f"blank picture.")
    return w + _section(
        g, "Occlusion", "occlusion",
        f"How much the probability of the true class drops when a 4x4 patch of the value 0 (the mean pixel) "
        f"covers each place, averaged over the windows covering a pixel; red: covering hurts, blue: it helps. "
        f"No gradients, only the model's outputs, at the patch's resolution. {tr['occlusion']:.0%} of its "
        f"positive mass is on ink, {_compare(tr['occlusion'], un['occlusion'])} an untrained network's "
        f"({un['occlusion']:.0%})" + (", the most of the four maps." if max(tr, key=tr.get) == "occlusion" else "."))


def _run_sections(g) -> list:
    """The training curves and the confusion matrix."""
    hist = g.hist
    if "test_accuracy" in hist and "train_accuracy" in hist:
        curve_text = (f"Loss and accuracy per epoch from the run's metrics.jsonl; last epoch: train accuracy "
                      f"{hist['train_accuracy'][-1]:.4f} (on shifted training images, `augment_shift="
                      f"{g.config.augment_shift}`), test accuracy {hist['test_accuracy'][-1]:.4f}.")
    else:
        curve_text = "Loss and accuracy per epoch from the run's metrics.jsonl."
    mistakes = ", ".join(f"{n} x a {t} read as {p}" for n, t, p in g.tops) or "none"
    return _section(g, "Training curves", "curves", curve_text) + _section(
        g, "Confusion matrix", "confusion",
        f"Rows: true class, columns: predicted, 32x32 pixels per cell, darker = more images. "
        f"{int(np.trace(g.conf))} of {int(g.conf.sum())} test images are on the diagonal; the mistakes: {mistakes}.")


def _overview_sections(g) -> list:
    """The overview figure and the ink table."""
    w = ["## Several digits side by side\n", "![overview](img/interp_overview.png)\n",
         f"The first test image of classes {', '.join(map(str, g.classes))}: the input and the four maps of its "
         f"true class, each map on its own scale (negative occlusion values clipped to 0). Made by this "
         f"script, not by a single `fcnn viz` call.\n",
         "## How much of each map is on the ink\n",
         f"Mean share of each map's mass on ink pixels (raw value > {INK}) over test images "
         f"0..{g.t_idx[-1]}; ink covers {g.ink_area:.1%} of an image, which is what a map spread evenly would "
         f"score. Untrained: the same architecture at init (key {g.seed + 1}). On digits the evidence is "
         f"not only ink (the empty middle of a 0 matters too), so this describes the maps; it is not a pass "
         f"mark. The pass mark is tested on synthetic data with a known evidence region in "
         f"`tests/test_viz.py`.\n",
         "| network | " + " | ".join(g.table["trained"]) + " |",
         "|---|" + "---|" * len(g.table["trained"])]
    for label, row in g.table.items():
        w.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")
    w.append("")
    return w


def main(argv=None) -> int:
    args = _parse(argv)
    _settle(args)
    print(f"seed {args.seed}; devices {jax.devices()}", flush=True)
    t0 = time.time()
    run = args.run if args.run is not None else _train(args)
    t_train = time.time() - t0
    g = _load(run, args)
    os.makedirs(g.img_dir, exist_ok=True)
    g.cmds = _pictures(g)
    t_pictures = time.time() - t0 - t_train
    _measure(g, args.examples, args.table_images)

    script = "python experiments/interpretability.py " + _cmd(argv if argv is not None else sys.argv[1:])
    w = _intro(g, script, time.time() - t0)
    _layer_facts(g)
    w += _layer_sections(g) + _map_sections(g) + _run_sections(g) + _overview_sections(g)
    with open(os.path.join(args.out, "interpretability.md"), "w") as f:
        f.write("\n".join(w) + "\n")
    print(f"\ntest accuracy {g.acc:.4f}; share of map mass on ink (ink = {g.ink_area:.1%} of the image):")
    for label, row in g.table.items():
        print(f"  {label:9s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(f"times: training {t_train:.1f} s, fcnn viz pictures {t_pictures:.1f} s, overview and table "
          f"{time.time() - t0 - t_train - t_pictures:.1f} s")
    print(f"wrote {os.path.join(args.out, 'interpretability.md')} and {g.img_dir}/interp_*.png")
    if args.temp_run is not None:  # --quick's own training directory
        shutil.rmtree(args.temp_run, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
