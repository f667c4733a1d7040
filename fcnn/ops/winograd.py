"""3x3 stride-1 convolution by Winograd's minimal filtering (Lavin & Gray 2015, arXiv:1509.09308).

F(m, 3) computes m outputs of a 3-tap correlation ``y[i] = sum_k d[i + k] g[k]`` from an input tile
of ``a = m + 2`` values with ``a`` multiplications instead of ``3m``:

    y = A^T [(G g) * (B^T d)]        (* elementwise; A^T: m x a, G: a x 3, B^T: a x a)

and in 2-D, nested: ``Y = A^T [(G g G^T) * (B^T d B)] A`` for an ``m x m`` output tile from an
``a x a`` input tile: F(2x2, 3x3) multiplies 16 times where direct convolution multiplies 36,
F(4x4, 3x3) 36 times instead of 144. The matrices are Toom-Cook's for the points 0, 1, -1 (and 2,
-2 for F(4, 3)) and infinity, scaled as in the paper; tests/test_winograd.py derives them again
from those points in exact rational arithmetic and checks the identity above.

Over channels (NHWC input, HWIO kernel, ``g`` groups of ``cg`` input and ``dg`` output channels),
with ``P = n * tiles``::

    V[xi, nu, p, c]   = (B^T d_p B)[xi, nu]          input tiles, stride m, overlapping by 2
    U[xi, nu, c, o]   = (G w[:, :, c, o] G^T)[xi, nu]
    M[xi, nu, p, o]   = sum_c V[xi, nu, p, c] U[xi, nu, c, o]     a*a matrix products (per group)
    Y_p               = A^T M[:, :, p, o] A           the m x m output tile

The transforms are constant-coefficient multiply-adds on strided slices (XLA fuses them; no dot,
so they run in full precision on every platform); the ``a*a`` products are one batched einsum,
which XLA:CPU runs as GEMMs. bfloat16/float16 inputs: the transforms in float32, F(2x2, 3x3)'s
products with operands rounded to the input's dtype and accumulated in float32 (as a 16-bit lax
conv multiplies), one plain matrix product per tile position for groups 1 (the form XLA:CPU runs on
AMX; ``impl="auto"`` picks this implementation for some such layers there, docs/perf_notes.md item 58);
F(4x4, 3x3)'s products stay in float32. The result is cast back.

Backward (``jax.custom_vjp``, hand-derived): for a 3x3 stride-1 convolution with pads (lo, hi) per
dimension, ``dX`` is the full correlation of dZ with the kernel rotated by 180 degrees and in/out
channels swapped per group, i.e. again a 3x3 stride-1 convolution, with pads ``(2 - lo, 2 - hi)``
(negative pads crop): it runs through the same Winograd forward. ``dW[i, j] = sum xp[p + i, q + j]
dZ[p, q]`` is the correlation of the padded input with dZ, computed by ``lax.conv_general_dilated``
(batch and feature axes exchanged, as in ``conv_vjp.conv_backward_kernel``); for 16-bit inputs as
the transposed patch matrix times dZ (``conv_vjp.conv_backward_kernel_patches``: the bfloat16
conv with exchanged axes took seconds per VGG step on XLA:CPU, item 58). The backward is
differentiable JAX, so grad-of-grad works (no forward mode: a ``custom_vjp``).

Non-finite values: a transform mixes every value of its tile (inf - inf = NaN) and the tiles read
explicit zero pads, so where x or w holds a NaN or inf the forward is lax's, and where dZ or w does,
dX is col2im's (one ``lax.cond`` each on ``all(isfinite(...))``): NaN and inf then land where
lax's do in float64 (tests/test_winograd.py; in bfloat16 where im2col_vjp's do).

Float32 error against float64 (random N(0, 1) input and kernel, batch 2, SAME; max |z32 - z64| /
max |z64|, ``gradcheck.compare``'s max_rel; CPU, 2026-12-02,
``python experiments/bench_winograd.py --error``; table in docs/perf_notes.md)::

    layer            C_in*9   lax      reference  F(2x2,3x3)  F(4x4,3x3)
    16x16 16->64       144    4.9e-07  1.6e-07    2.2e-07     4.8e-06
    32x32 64->128      576    9.5e-07  2.0e-07    3.3e-07     6.6e-06
    16x16 128->256    1152    1.1e-06  2.7e-07    5.1e-07     8.8e-06
    8x8 256->512      2304    1.7e-06  3.9e-07    4.3e-07     7.8e-06

F(2x2, 3x3) is as accurate as direct summation (its transforms hold only 0, +-1 and 1/2, exact in
binary). F(4x4, 3x3) is 10-20x worse: B^T's 4 and 5, A^T's 8 and G's 1/6 and 1/24 amplify
rounding, and it grows with C_in (one draw of 16x16 256->64 gave 1.04e-5), reaching the 1e-5
float32 tolerance of ``gradcheck.tolerance`` at VGG widths. So ``DEFAULT_TILE`` is 2; F(4x4, 3x3)
(2.25 channel-product multiplications per output against F(2x2, 3x3)'s 4 and direct's 9) is
there by ``tile=4`` for those who accept ~1e-5. Larger tiles need more points (+-1/2, +-3) and
lose more accuracy; they are not offered.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fcnn import _checks, shapes
from fcnn.dtypes import acc_dtype, half_float
from fcnn.ops import conv_vjp

__all__ = ["WINOGRAD_TILES", "DEFAULT_TILE", "winograd_matrices", "conv2d_winograd", "supports", "refusal", "winograd_backward_input",
           "winograd_backward_kernel"]

WINOGRAD_TILES = (2, 4)  # m of F(m x m, 3 x 3)
DEFAULT_TILE = 2  # chosen by the float32 error above

Pair = Tuple[int, int]
Pads = Tuple[Pair, Pair]

# Lavin & Gray 2015, section 4.1 (F(2, 3)) and 4.2 (F(4, 3)): B^T, G, A^T
_F23 = (
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    [[1, 1, 1, 0], [0, 1, -1, -1]],
)
_F43 = (
    [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)
_MATRICES = {2: _F23, 4: _F43}


def _check_tile(tile) -> int:
    if not _checks.is_int(tile) or tile not in WINOGRAD_TILES:
        raise ValueError(f"tile must be one of {', '.join(map(str, WINOGRAD_TILES))}; got {tile!r}")
    return int(tile)


def winograd_matrices(tile: int = DEFAULT_TILE) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B^T, G, A^T)`` of F(tile, 3) as float64 arrays: (a, a), (a, 3), (tile, a), a = tile + 2."""
    return tuple(np.array(mat, np.float64) for mat in _MATRICES[_check_tile(tile)])


def supports(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> bool:
    """Whether a convolution is one this implementation computes: 2-D, 3x3, stride 1, dilation 1."""
    return tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def refusal(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> str:
    """The error of a convolution ``supports`` rejects, naming the rule and what was given."""
    return (f"impl='winograd' computes only 2-D convolutions with a 3x3 kernel, stride 1 and dilation 1; "
            f"got kernel {tuple(kernel)}, stride {tuple(stride)}, dilation {tuple(dilation)}")


def _check(x_shape, w_shape, stride, pads: Pads, dilation, groups) -> None:
    """The rules of this implementation, and the shapes (conv2d has checked them when it calls)."""
    shapes.check_rank4(x_shape, "x")
    shapes.check_rank4(w_shape, "w")
    if tuple(w_shape[:2]) != (3, 3):
        raise ValueError(f"impl='winograd' needs a 3x3 kernel, got w of shape {tuple(w_shape)} "
                         f"(HWIO: kh, kw = {w_shape[0]}, {w_shape[1]})")
    for name, value in (("stride", stride), ("dilation", dilation)):
        if tuple(shapes.normalize_pair(value, name)) != (1, 1):
            raise ValueError(f"impl='winograd' needs {name} 1, got {value!r}")
    shapes.check_groups(x_shape[3], w_shape[2], w_shape[3], _checks.positive_int(groups, "groups"))
    out_hw = shapes.conv_output_hw(x_shape[1:3], (3, 3), (1, 1), pads, (1, 1))
    shapes.check_nonempty(out_hw, x_shape[1:3], (3, 3), (1, 1), pads, "the 3x3 kernel")


def _combine(mat, parts: Sequence):
    """``[sum_j mat[i][j] * parts[j] for i]``: a constant matrix applied to a list of arrays, as
    elementwise multiply-adds (terms with coefficient 0 skipped, +-1 without a multiply)."""
    out = []
    for row in mat:
        acc = None
        for c, part in zip(row, parts):
            if c == 0:
                continue
            term = part if c == 1 else (-part if c == -1 else part * float(c))
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _pad_hw(x, pads: Pads):
    """Zero-pad the spatial dims of NHWC ``x``; negative pads crop (``lax.pad`` semantics)."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _input_tiles(xp, bt, m: int, tiles: Pair):
    """``B^T d B`` of every input tile: ``a*a`` arrays (n, th, tw, cin), tile (t, u) = xp[t*m : t*m + a,
    u*m : u*m + a]; row transform on ``a`` row slices, then column transform on column slices."""
    a = m + 2
    (th, tw) = tiles
    rows = [lax.slice_in_dim(xp, r, r + (th - 1) * m + 1, m, axis=1) for r in range(a)]  # (n, th, wp, c)
    out = []
    for row in _combine(bt, rows):
        cols = [lax.slice_in_dim(row, s, s + (tw - 1) * m + 1, m, axis=2) for s in range(a)]  # (n, th, tw, c)
        out += _combine(bt, cols)
    return out  # index xi*a + nu


def _kernel_transform(w, g):
    """``G w G^T`` per (cin, cout): (a*a, cg, cout), index xi*a + nu."""
    rows = _combine(g, [w[i] for i in range(3)])  # a arrays (3, cg, cout)
    return jnp.stack([u for row in rows for u in _combine(g, [row[j] for j in range(3)])])


def _tile_products(vs, u, groups: int, precision, acc):
    """``M[t] = V[t] . U[t]`` for the ``a*a`` tile positions t: (p, cout) each.

    Operands of 16 bits stay 16-bit, accumulated in float32, one plain matrix product per position
    (groups 1): the one form in which XLA:CPU reaches AMX (docs/perf_notes.md items 53 and 58); a
    batched product fell off it. Wider operands: one einsum batched over the positions, which
    XLA:CPU ran faster in float32 than a product per position (item 58)."""
    cin, cout = vs[0].shape[-1], u.shape[-1]
    p = vs[0].size // cin
    if groups == 1 and half_float(vs[0].dtype):
        return [lax.dot(jnp.reshape(v, (p, cin)), u[t], precision=precision, preferred_element_type=acc)
                for t, v in enumerate(vs)]
    if groups == 1:
        return list(jnp.einsum("tpc,tco->tpo", jnp.reshape(jnp.stack(vs), (len(vs), p, cin)), u, precision=precision,
                               preferred_element_type=acc))
    v = jnp.reshape(jnp.stack(vs), (len(vs), p, groups, cin // groups))
    mm = jnp.einsum("tpkc,tcko->tpko", v, jnp.reshape(u, (len(vs), cin // groups, groups, cout // groups)),
                    precision=precision, preferred_element_type=acc)  # (a*a, p, g, dg)
    return list(jnp.reshape(mm, (len(vs), p, cout)))


def _output_tiles(ms, at, n: int, tiles: Pair):
    """``A^T M A`` per tile, laid out as pixels: (n, th*m, tw*m, cout) from the ``a*a`` products."""
    (th, tw), m, a = tiles, len(at), len(at[0])
    mm = [[jnp.reshape(ms[xi * a + nu], (n, th, tw, -1)) for nu in range(a)] for xi in range(a)]
    rows = [[_combine([row], [mm[xi][nu] for xi in range(a)])[0] for nu in range(a)] for row in at]  # (A^T M)[i]
    y = [[_combine([col], rows[i])[0] for col in at] for i in range(m)]  # y[i][j]: pixel (t*m + i, u*m + j)
    y = jnp.stack([jnp.stack(y[i], axis=3) for i in range(m)], axis=2)  # (n, th, i, tw, j, cout)
    return jnp.reshape(y, (n, th * m, tw * m, y.shape[-1]))


def _forward(x, w, pads: Pads, groups: int, precision, tile: int):
    """The Winograd convolution of NHWC ``x`` with HWIO 3x3 ``w``, stride 1: (n, oh, ow, cout).

    The transforms run in float32 (float64 for float64); F(2, 3)'s tile-position products take
    operands of the input's dtype (16-bit ones rounded to it, as a 16-bit lax conv multiplies) and
    accumulate in float32. F(4, 3)'s products stay in float32 for 16-bit inputs: its transforms'
    larger coefficients made bfloat16 operands 6-8e-2 off float64 (F(2, 3): 5e-3, lax 2.5e-3;
    tests/test_winograd.py)."""
    bt, g, at = _MATRICES[tile]
    m = tile
    n = x.shape[0]
    acc = acc_dtype(x.dtype)
    xp = _pad_hw(x.astype(acc), pads)
    oh, ow = xp.shape[1] - 2, xp.shape[2] - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = _pad_hw(xp, ((0, th * m + 2 - xp.shape[1]), (0, tw * m + 2 - xp.shape[2])))  # whole tiles
    operand = x.dtype if tile == 2 else acc  # F(4, 3) in bfloat16 operands: 6-8e-2 relative error
    vs = [v.astype(operand) for v in _input_tiles(xp, bt, m, (th, tw))]  # a*a of (n, th, tw, cin)
    u = _kernel_transform(w.astype(acc), g).astype(operand)  # (a*a, cg, cout)
    y = _output_tiles(_tile_products(vs, u, groups, precision, acc), at, n, (th, tw))
    return y[:, :oh, :ow].astype(x.dtype)  # (n, oh, ow, cout)


# ----------------------------------------------------------------------------- hand-derived backward
def winograd_backward_input(dz, w, *, pads: Pads, groups: int, precision=None, tile: int = DEFAULT_TILE):
    """``dX``: dZ convolved (Winograd, stride 1) with the rotated, in/out-swapped kernel, pads 2 - p.

    Per dimension, ``z[o] = sum_t xp[o + t] w[t]`` gives ``dxp[r] = sum_t dz[r - t] w[t]``, the full
    correlation of dZ (padded by 2 on both sides) with ``w`` reversed; the forward's pads (lo, hi)
    crop ``dxp`` to ``dx``, which folds into that padding: (2 - lo, 2 - hi), negative = crop.

    Args:
      dz: (n, oh, ow, cout); w: (3, 3, cin/groups, cout) HWIO, the forward's kernel.
    Returns:
      dX: (n, h, w, cin) with h = oh + 2 - lo - hi.
    """
    _, _, cg, cout = w.shape
    dg = cout // groups
    w_t = jnp.reshape(w, (3, 3, cg, groups, dg))  # (3, 3, cg, g, dg)
    w_t = jnp.transpose(w_t, (0, 1, 4, 3, 2))  # (3, 3, dg, g, cg): in/out swapped per group
    w_t = jnp.reshape(w_t, (3, 3, dg, groups * cg))[::-1, ::-1]  # (3, 3, dg, cin), rotated 180 degrees
    pads_t = tuple((2 - lo, 2 - hi) for lo, hi in pads)
    return _winograd(dz, w_t, pads_t, groups, precision, tile)


def winograd_backward_kernel(x, dz, *, pads: Pads, groups: int, precision=None):
    """``dW[i, j, c, o] = sum_{n, p, q} xp[n, p + i, q + j, c] dZ[n, p, q, o]`` (within each group).

    One ``lax.conv_general_dilated``: the padded input with channels as the batch axis and the
    examples as features, dZ as the (oh, ow) kernel with examples as its input features;
    ``batch_group_count`` keeps the groups apart. For 16-bit inputs instead the transposed patch
    matrix times dZ (``conv_vjp.conv_backward_kernel_patches``, 16-bit operands accumulated in
    float32: on a CPU with AMX, VGG's 16x16 128->256 layer's forward + both gradients took 11.0
    against 17.9 ms with the conv, docs/perf_notes.md item 58).
    x: (n, h, w, cin); dz: (n, oh, ow, cout). Returns (3, 3, cin/groups, cout) HWIO.
    """
    if half_float(x.dtype):
        return conv_vjp.conv_backward_kernel_patches(x, dz, (3, 3), stride=(1, 1), pads=pads, dilation=(1, 1),
                                                     groups=groups, precision=precision)
    xp = _pad_hw(x, pads)  # (n, oh + 2, ow + 2, cin)
    return lax.conv_general_dilated(xp, dz, (1, 1), "VALID", batch_group_count=groups, precision=precision,
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))  # (3, 3, cg, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _winograd(x, w, pads, groups, precision, tile):
    return _forward(x, w, pads, groups, precision, tile)


def _winograd_fwd(x, w, pads, groups, precision, tile):
    return _winograd(x, w, pads, groups, precision, tile), (x, w)


def _winograd_bwd(pads, groups, precision, tile, res, dz):
    x, w = res
    dx = conv_vjp.if_finite(
        (dz, w), lambda dz, w: winograd_backward_input(dz, w, pads=pads, groups=groups, precision=precision, tile=tile),
        lambda dz, w: conv_vjp.conv_backward_input_col2im(dz, w, x.shape[1:3], stride=(1, 1), pads=pads,
                                                          dilation=(1, 1), groups=groups, precision=precision),
        dz, w)
    dw = winograd_backward_kernel(x, dz, pads=pads, groups=groups, precision=precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


# ----------------------------------------------------------------------------- entry point
def conv2d_winograd(x, w, stride, pads, dilation, groups, precision=None, *, tile: int = DEFAULT_TILE):
    """3x3 stride-1 convolution by Winograd F(tile x tile, 3 x 3), with the hand-derived VJP.

    The signature of conv_nd's channels-last bodies (``_IMPLS``), to register as ``impl="winograd"``.

    Args:
      x: (n, h, w, cin) NHWC; w: (3, 3, cin/groups, cout) HWIO.
      stride, dilation: must be 1 (int or pair).
      pads: ((top, bottom), (left, right)) as ``shapes.normalize_padding`` returns (may be negative).
      groups: feature groups (cin = cout = groups: depthwise).
      precision: passed to the tile-position matrix products and the kernel-gradient conv.
      tile: output tile size m of F(m, 3), one of ``WINOGRAD_TILES``.
    Returns:
      z: (n, h + top + bottom - 2, w + left + right - 2, cout), the dtype of ``x``.
    Raises:
      ValueError naming the argument for a kernel other than 3x3, stride or dilation != 1, a bad tile.
    """
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    _check(jnp.shape(x), jnp.shape(w), stride, pads, dilation, groups)
    tile = _check_tile(tile)
    return conv_vjp.if_finite((x, w), lambda x, w: _winograd(x, w, pads, groups, precision, tile),
                              lambda x, w: conv_vjp.lax_conv(x, w, (1, 1), pads, (1, 1), groups, precision), x, w)
