"""The grid and the numpy references shared by the 2-D pool tests (tests/test_pool.py: the gradients;
tests/test_pool_forward.py: the forward values).

The grid is /work/shared/GRADCHECK.md's: 144 cases of windows, strides, paddings, dilations and
layouts, marked slow but for a pairwise cover of 12. The references are independent of fcnn: the
geometry written out from the formulas, plain numpy loops over windows for the forward, and the
backward's gradient routing under each tie policy.
"""
import itertools

import numpy as np
import pytest

X_SHAPE = (2, 6, 7, 3)  # NHWC
WINDOWS = [(2, 2), (3, 3), (3, 2), (2, 1)]
STRIDES = ["overlap", "window", (2, 1)]
PADDINGS = ["VALID", "SAME", ((0, 1), (1, 0))]
DILATIONS = [1, 2]
LAYOUTS = ["NHWC", "NCHW"]


def _grid_id(w, s, p, d, layout):
    return f"w{w[0]}x{w[1]}-s{s}-p{p if isinstance(p, str) else 'expl'}-d{d}-{layout}"


def _default(wi, si, pi, di, li):
    """The default cover: 12 of the 144 cases in which every pair of values of two axes appears
    (padding index (window + stride) mod 3, dilation (window + padding) mod 2, layout
    (padding + window // 2) mod 2; ``test_default_grid_is_a_pairwise_cover`` checks it)."""
    return pi == (wi + si) % 3 and di == (wi + pi) % 2 and li == (pi + wi // 2) % 2


def _grid():
    """The full GRADCHECK grid (144 cases, marked slow) plus the default cover of 12 of them."""
    cases = []
    for (wi, w), (si, s), (pi, p) in itertools.product(enumerate(WINDOWS), enumerate(STRIDES), enumerate(PADDINGS)):
        for (di, d), (li, layout) in itertools.product(enumerate(DILATIONS), enumerate(LAYOUTS)):
            marks = () if _default(wi, si, pi, di, li) else (pytest.mark.slow,)
            cases.append(pytest.param(w, s, p, d, layout, marks=marks, id=_grid_id(w, s, p, d, layout)))
    return cases


GRID = _grid()
GRID_ARGS = "window,stride,padding,dilation,layout"
# tie-heavy inputs: the default cover, and every third case of the grid under -m slow
TIE_GRID = [p for i, p in enumerate(GRID) if not p.marks or i % 3 == 0]


def _stride(stride, window):
    return {"overlap": 1, "window": None}.get(stride, stride) if isinstance(stride, str) else stride


def _perm(shape, seed=0, dtype=np.float64):
    """Tie-free input: a random permutation of 0..size-1 (exact in bfloat16 up to 256)."""
    return np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(dtype)


def _explicit_geometry(x_shape, window, stride, padding, dilation):
    """Independent geometry for the numpy references (NHWC), written out from the formulas."""
    kh, kw = window
    sh, sw = window if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    h, w = x_shape[1:3]
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = []
        for n_in, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
            total = max((-(-n_in // s) - 1) * s + d * (k - 1) + 1 - n_in, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    else:
        pads = padding
    oh = (h + sum(pads[0]) - dh * (kh - 1) - 1) // sh + 1
    ow = (w + sum(pads[1]) - dw * (kw - 1) - 1) // sw + 1
    return (sh, sw), (dh, dw), pads, (oh, ow)


def _np_windows(x, window, stride, padding, dilation):
    """Yields (b, i, j, ch, cells) where cells lists (value, row, col) of real cells in window order."""
    (sh, sw), (dh, dw), pads, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, dilation)
    n, h, w, c = x.shape
    for b, i, j, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        cells = []
        for a, e in itertools.product(range(window[0]), range(window[1])):
            r, q = i * sh + a * dh - pads[0][0], j * sw + e * dw - pads[1][0]
            if 0 <= r < h and 0 <= q < w:
                cells.append((x[b, r, q, ch], r, q))
        yield b, i, j, ch, cells, window[0] * window[1]


def np_max_pool(x, window, stride, padding, dilation):
    """Numpy loop: max of real cells, -inf if none (NHWC)."""
    _, _, _, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, dilation)
    y = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for b, i, j, ch, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if cells:
            y[b, i, j, ch] = max(v for v, _, _ in cells)
    return y


def np_max_pool_grad(x, g, window, stride, padding, dilation, ties="first"):
    """Numpy hand routing of the max-pool gradient to the real maxima under a tie policy."""
    dx = np.zeros(x.shape)
    for b, i, j, ch, cells, _ in _np_windows(x, window, stride, padding, dilation):
        if not cells:
            continue
        top = max(v for v, _, _ in cells)
        winners = [(r, q) for v, r, q in cells if v == top]
        if ties == "first":
            winners = winners[:1]
        share = g[b, i, j, ch] / (len(winners) if ties == "split" else 1)
        for r, q in winners:
            dx[b, r, q, ch] += share
    return dx


def np_avg_pool(x, window, stride, padding, count_include_pad):
    _, _, _, (oh, ow) = _explicit_geometry(x.shape, window, stride, padding, 1)
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for b, i, j, ch, cells, full in _np_windows(x, window, stride, padding, 1):
        y[b, i, j, ch] = sum(v for v, _, _ in cells) / (full if count_include_pad else max(len(cells), 1))
    return y


def _nchw(a):
    return np.transpose(a, (0, 3, 1, 2))
