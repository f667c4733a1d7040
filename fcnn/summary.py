"""The model summary table.

What a layer *is* (name, kernel, stride, FLOPs, children) is recorded with
``fcnn.types.describe`` and read back with ``fcnn.types.layer_info``; those names (and
``LayerInfo``, ``numel``) are re-exported here for older imports.

``summary(model, in_shape)`` walks the tree: for every layer it runs ``init`` under
``jax.eval_shape`` (no arrays are allocated) to get the output shape and the
parameter shapes, and reports per row:

* output shape, own parameter count (combinator rows hold 0; their children own them),
* FLOPs of one forward pass over the whole batch (2 per multiply-add, ``fcnn.shapes``),
* receptive field ``r`` and jump ``j`` along H (W for 1-D inputs) of one output pixel in input
  pixels: ``r += (F_eff - 1) * j; j *= S`` (``shapes.receptive_field``). ``residual`` and
  ``branches`` take the max over their paths. ``Flatten``/global pools see the
  whole remaining extent of that axis. A layer whose ``LayerInfo.rf`` returns None (transposed conv,
  upsampling, an adaptive pool with irregular windows: ``fcnn.decoder``) has no integer
  receptive field; its row and every row after it show "-" (``rf``/``jump`` None), and so does
  a ``residual``/``branches`` with such a path.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import jax

from fcnn import shapes
from fcnn.types import Layer, LayerInfo, Shape, check_layer, check_shape, describe, layer_info, numel

# LayerInfo, describe, layer_info, numel live in fcnn.types; re-exported for older imports.
__all__ = ["LayerInfo", "describe", "layer_info", "numel", "Row", "Summary", "summary", "count_params"]


def count_params(params) -> int:
    """Number of scalars in a params pytree (arrays or ``ShapeDtypeStruct``s)."""
    return sum(numel(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def _abstract_init(layer: Layer, in_shape: Shape):
    """``(out_shape, params)`` of ``layer.init`` with no arrays allocated."""
    box = {}

    def run(key):
        out_shape, params, state = layer.init(key, in_shape)
        box["out"] = tuple(out_shape)
        return params, state

    params, _ = jax.eval_shape(run, jax.random.PRNGKey(0))
    return box["out"], params


class Row(NamedTuple):
    name: str  # path of the layer in the tree, e.g. "3.block.0.Conv2D"
    kind: str
    detail: str
    depth: int
    out_shape: Shape
    params: int  # own parameters (0 for combinators)
    flops: int  # own FLOPs (a combinator's merge only)
    rf: Optional[int]  # None: undefined, "-" (module docstring)
    jump: Optional[int]


def _rf_text(rf, jump) -> str:
    return "-" if rf is None else f"{rf} (j={jump})"


class Summary(NamedTuple):
    """Rows in tree order plus totals; ``str()`` renders an aligned text table."""

    rows: List[Row]
    in_shape: Shape
    out_shape: Shape
    params: int
    flops: int
    rf: Optional[int]
    jump: Optional[int]

    def __str__(self) -> str:
        header = ("layer", "detail", "output shape", "params", "FLOPs", "RF (H)")
        body = [("  " * r.depth + r.name, r.detail, str(tuple(r.out_shape)), f"{r.params:,}",
                 f"{r.flops:,}", _rf_text(r.rf, r.jump)) for r in self.rows]
        total = ("total", f"in {tuple(self.in_shape)}", str(tuple(self.out_shape)), f"{self.params:,}",
                 f"{self.flops:,}", _rf_text(self.rf, self.jump))
        table = [header] + body + [total]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        right = (False, False, False, True, True, True)

        def fmt(line):
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right)).rstrip()

        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule] + [fmt(b) for b in body] + [rule, fmt(total)])


def _walk(layer: Layer, in_shape: Shape, rf: Tuple[int, int], name: str, depth: int, rows: List[Row], where=""):
    """Append rows for ``layer`` (and its children); return ``(out_shape, (r, j))``.

    ``where``: the position of the enclosing combinator ("3.block"), for errors."""
    info = layer_info(layer)
    label = f"{name}.{info.name}" if name else info.name
    pos = ".".join(p for p in (where, name) if p)
    if info.kind == "serial":
        rows.append(Row(label, info.kind, info.detail, depth, (), 0, 0, *rf))
        head = len(rows) - 1
        shape, cur = tuple(in_shape), rf
        for i, child in enumerate(info.children):
            shape, cur = _walk(child, shape, cur, str(i), depth + 1, rows, pos)
        rows[head] = rows[head]._replace(out_shape=shape, rf=cur[0], jump=cur[1])
        return shape, cur
    if info.kind in ("residual", "branches"):
        head = len(rows)
        rows.append(None)
        outs, rfs = [], []
        names = ("block", "shortcut") if info.kind == "residual" else [str(i) for i in range(len(info.children))]
        for child_name, child in zip(names, info.children):
            if child is None:  # identity shortcut
                outs.append(tuple(in_shape))
                rfs.append(rf)
                continue
            out, cur = _walk(child, in_shape, rf, child_name, depth + 1, rows, pos)
            outs.append(out)
            rfs.append(cur)
        out_shape, _ = _abstract_init(layer, tuple(in_shape))
        merged = (None, None) if any(r is None for r, _ in rfs) else (max(r for r, _ in rfs),
                                                                        max(j for _, j in rfs))
        flops = info.flops(in_shape, out_shape) if info.flops else 0
        rows[head] = Row(label, info.kind, info.detail, depth, out_shape, 0, flops, *merged)
        return out_shape, merged
    try:
        out_shape, params = _abstract_init(layer, tuple(in_shape))
    except ValueError as e:  # name the layer that cannot take its input, and that input
        who = f"layer {pos} ({info.name})" if pos else info.name
        raise ValueError(f"{who} given inputs of shape {tuple(in_shape)}: {e}") from None
    r, j = rf
    if info.rf is not None and r is not None:
        step = info.rf(tuple(in_shape))
        if step is None:  # no integer receptive field from here on
            r, j = None, None
        else:
            f, s, d = step
            r, j = r + (shapes.effective_size(f, d) - 1) * j, j * s
    flops = info.flops(tuple(in_shape), out_shape) if info.flops else 0
    rows.append(Row(label, info.kind, info.detail, depth, out_shape, count_params(params), flops, r, j))
    return out_shape, (r, j)


def summary(model: Layer, in_shape: Sequence[int]) -> Summary:
    """Per-layer table of a model for an input of ``in_shape`` (batch dimension included).

    Totals: ``params`` is the size of ``model.init``'s whole params pytree; ``flops`` the sum
    of every row's own FLOPs (for the whole batch); ``rf``/``jump`` those of the output.
    A top-level ``serial`` is unwrapped so its children are the table's rows.
    """
    check_layer(model, "model")
    in_shape = check_shape(in_shape)
    rows: List[Row] = []
    info = layer_info(model)
    try:
        if info.kind == "serial":
            shape, rf = in_shape, (1, 1)
            for i, child in enumerate(info.children):
                shape, rf = _walk(child, shape, rf, str(i), 0, rows)
        else:
            shape, rf = _walk(model, in_shape, (1, 1), "", 0, rows)
    except ValueError as e:
        raise ValueError(f"in_shape {in_shape} does not fit the model: {e}") from None
    out_shape, params = _abstract_init(model, in_shape)
    assert out_shape == tuple(shape), (out_shape, shape)
    return Summary(rows, in_shape, out_shape, count_params(params), sum(r.flops for r in rows), *rf)
