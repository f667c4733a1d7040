"""summary(): parameter counts, FLOPs and receptive fields against hand computation."""
import jax
import pytest

from fcnn import layers as L
from fcnn import models, types
from fcnn.combinators import branches, residual, serial
from fcnn.layers_nd import Conv1D, Conv3D, GlobalAvgPool
from fcnn.summary import LayerInfo, count_params, describe, summary
from fcnn.types import Layer


def _abstract_params(model, in_shape):
    return jax.eval_shape(lambda k: model.init(k, in_shape)[1], jax.random.PRNGKey(0))


def test_lenet5_table_by_hand():
    model = models.lenet5()
    s = summary(model, (1, 28, 28, 1))
    names = [r.name for r in s.rows]
    assert names == ["0.Conv2D", "1.Relu", "2.MaxPool2D", "3.Conv2D", "4.Relu", "5.MaxPool2D", "6.Flatten",
                     "7.Dense", "8.Relu", "9.Dense", "10.Relu", "11.Dense"]
    # parameters: conv kh*kw*cin*cout + cout, dense in*out + out
    assert [r.params for r in s.rows] == [5 * 5 * 1 * 6 + 6, 0, 0, 5 * 5 * 6 * 16 + 16, 0, 0, 0,
                                          400 * 120 + 120, 0, 120 * 84 + 84, 0, 84 * 10 + 10]
    assert s.params == 61706 == count_params(_abstract_params(model, (1, 28, 28, 1)))
    assert [r.out_shape for r in s.rows][:7] == [(1, 28, 28, 6)] * 2 + [(1, 14, 14, 6)] + [(1, 10, 10, 16)] * 2 + [
        (1, 5, 5, 16), (1, 400)]
    # receptive field along H, r += (F_eff - 1) * j, j *= S:
    # conv5: 5, j1 | pool2: 6, j2 | conv5: 6+4*2=14 | pool2: 16, j4 | flatten over h=5: 16+4*4=32
    assert [r.rf for r in s.rows] == [5, 5, 6, 14, 14, 16] + [32] * 6
    assert [r.jump for r in s.rows] == [1, 1, 2, 2, 2] + [4] * 7
    assert (s.rf, s.jump) == (32, 4)
    # FLOPs: conv1 2*(28*28*6 outputs)*(5*5*1) + bias = 235200 + 4704; pool 14*14*6*(4-1);
    # conv2 2*(10*10*16)*(5*5*6) + 1600; dense1 2*400*120 + 120
    assert s.rows[0].flops == 239904
    assert s.rows[2].flops == 3528
    assert s.rows[3].flops == 481600
    assert s.rows[7].flops == 96120
    assert s.flops == sum(r.flops for r in s.rows)


def test_conv_flops_scale_with_batch_groups_and_bias():
    s = summary(L.Conv2D(8, 3, groups=2, use_bias=False, stride=2, padding="SAME"), (4, 10, 10, 6))
    (row,) = s.rows
    # out (4, 5, 5, 8) = 800 outputs, each 3*3*(6/2) = 27 multiply-adds
    assert row.out_shape == (4, 5, 5, 8) and row.flops == 2 * 800 * 27
    assert row.params == 3 * 3 * 3 * 8 and (row.rf, row.jump) == (3, 2)


def test_residual_and_branches_take_the_max_receptive_field():
    block = serial(L.Conv2D(4, 3, padding="SAME"), L.Conv2D(4, 3, padding="SAME"))
    net = serial(L.Conv2D(4, 1), residual(block), branches(L.Conv2D(2, 1), L.Conv2D(3, 5, padding="SAME")))
    s = summary(net, (1, 9, 9, 2))
    by_name = {r.name: r for r in s.rows}
    assert by_name["1.residual"].rf == 5  # block 1+2+2 vs identity 1
    assert by_name["1.residual"].flops == 9 * 9 * 4  # the addition
    assert by_name["2.branches"].rf == 9 and by_name["2.branches"].out_shape == (1, 9, 9, 5)
    assert [r.name for r in s.rows] == ["0.Conv2D", "1.residual", "block.serial", "0.Conv2D", "1.Conv2D",
                                        "2.branches", "0.Conv2D", "1.Conv2D"]
    assert s.params == count_params(_abstract_params(net, (1, 9, 9, 2))) == (2 * 4 + 4) + 2 * (9 * 4 * 4 + 4) + (
        4 * 2 + 2) + (25 * 4 * 3 + 3)


def test_small_resnet_total_equals_params_pytree():
    model = models.small_resnet()
    s = summary(model, (2, 32, 32, 3))
    assert s.params == count_params(_abstract_params(model, (2, 32, 32, 3)))
    assert s.out_shape == (2, 10)
    assert sum(r.params for r in s.rows) == s.params  # combinator rows own nothing: no double count


def test_rendered_table_is_aligned():
    text = str(summary(models.lenet5(), (1, 28, 28, 1)))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["layer", "detail"] and lines[-1].startswith("total")
    assert "61,706" in lines[-1]
    assert len({len(line) for line in lines}) == 1  # last column right-aligned: one width
    assert len(lines) == 12 + 4


def test_unknown_layer_and_describe():
    """A hand-built layer is a "?" row with 0 FLOPs until described (layer_info itself: test_types)."""
    raw = Layer(lambda k, s: (s, {}, {}), lambda p, s, x, *, key=None, train=False: (x, s))
    assert summary(raw, (2, 3)).rows[0].name == "?"
    assert summary(raw, (2, 3)).rows[0].flops == 0
    named = describe(raw, LayerInfo("Mine", "lambda", flops=lambda i, o: 7))
    assert named is raw and summary(raw, (2, 3)).rows[0].name == "Mine"
    assert summary(raw, (2, 3)).rows[0].flops == 7


def test_metadata_names_are_reexported_from_types():
    from fcnn.summary import layer_info, numel

    assert (LayerInfo, describe, layer_info, numel) == (types.LayerInfo, types.describe, types.layer_info,
                                                       types.numel)


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"^model must be a Layer, got function$"):
        summary(lambda x: x, (1, 2))
    with pytest.raises(ValueError, match=r"^in_shape must be a tuple of positive ints \(batch included\), "
                                         r"got \(1, 28, 28, 0\)$"):
        summary(models.lenet5(), (1, 28, 28, 0))


def test_an_input_too_small_names_in_shape_the_layer_and_its_input():
    """LeNet-5 at 4x4: c1 (5x5, SAME) keeps 4x4, s2 halves it to 2x2, and c3's 5x5 VALID kernel does not fit
    (the rows of the table: 0 Conv2D, 1 Tanh, 2 AvgPool2D... c3 is the first layer given a 2x2 input)."""
    rows = summary(models.lenet5(), (1, 28, 28, 1)).rows
    c3 = next(i for i, r in enumerate(rows) if r.kind == "conv" and r.out_shape[1:3] == (10, 10))
    with pytest.raises(ValueError) as err:
        summary(models.lenet5(), (1, 4, 4, 1))
    assert str(err.value).startswith(f"in_shape (1, 4, 4, 1) does not fit the model: layer {c3} (Conv2D) given "
                                     f"inputs of shape (1, 2, 2, 6): the kernel is larger than the padded input")
    nested = serial(L.Conv2D(4, 3), residual(serial(L.Conv2D(4, 3, padding="SAME"), L.Conv2D(4, 5))))
    with pytest.raises(ValueError, match=r"^in_shape \(1, 5, 5, 1\) does not fit the model: layer 1\.block\.1 "
                                         r"\(Conv2D\) given inputs of shape \(1, 3, 3, 4\)"):
        summary(nested, (1, 5, 5, 1))
    with pytest.raises(ValueError, match=r"^in_shape \(1, 5, 5, 1\) does not fit the model: Conv2D given inputs"):
        summary(L.Conv2D(4, 7), (1, 5, 5, 1))


def test_undefined_receptive_field_shows_a_dash_and_propagates():
    """A transposed conv has no integer receptive field: its row, the rows after it and a combinator with it
    on one path read "-" (None); a path without one keeps its numbers (hand-computed: 3x3 then 2x2 s2 pool)."""
    from fcnn import ConvTranspose2D, skip_concat

    up = serial(L.MaxPool2D(2), ConvTranspose2D(2, 2, stride=2))
    net = serial(L.Conv2D(2, 3, padding="SAME"), skip_concat(up), L.Conv2D(1, 1))
    s = summary(net, (1, 8, 8, 1))
    rf = {r.name: (r.rf, r.jump) for r in s.rows}
    assert rf["0.Conv2D"] == (3, 1) and rf["0.MaxPool2D"] == (4, 2) and rf["0.identity"] == (3, 1)
    assert rf["1.ConvTranspose2D"] == rf["1.branches"] == rf["2.Conv2D"] == (None, None) and s.rf is None
    assert [r.params for r in s.rows if r.params] == [9 * 2 + 2, 2 * 2 * 2 * 2 + 2, 4 * 1 + 1]
    assert str(s).splitlines()[-1].split()[-1] == "-" and s.out_shape == (1, 8, 8, 1)



@pytest.mark.parametrize("convs, layout, in_shape, rfs", [
    # 1-D: two 3-wide convs (r 3, 5) leave width 16; Flatten sees all of it: 5 + (16 - 1) * 1 = 20
    (lambda: [Conv1D(4, 3), Conv1D(4, 3)], "NHWC", (1, 20, 1), [3, 5, 20]),
    (lambda: [Conv1D(4, 3, layout="NCW"), Conv1D(4, 3, layout="NCW")], "NCW", (1, 1, 20), [3, 5, 20]),
    # stride 2 (j 2): width 10 left, 3 + (10 - 1) * 2 = 21, the whole input
    (lambda: [Conv1D(4, 3, stride=2)], "NWC", (1, 21, 1), [3, 21]),
    # 3-D: along H of (D, H, W): H 10 -> 8 after the conv, 3 + 7 = 10 (D would give 6, W 14)
    (lambda: [Conv3D(2, 3)], "NHWC", (1, 10, 10, 10, 1), [3, 10]),
    (lambda: [Conv3D(2, 3)], "NDHWC", (1, 6, 10, 14, 1), [3, 10]),
    (lambda: [Conv3D(2, 3, layout="NCDHW")], "NCHW", (1, 1, 6, 10, 14), [3, 10]),
    # 2-D as before: H 7 -> 5, 3 + 4 = 7 (W would give 9)
    (lambda: [L.Conv2D(2, 3)], "NHWC", (1, 7, 9, 1), [3, 7]),
])
def test_flatten_sees_the_whole_remaining_extent_in_every_rank(convs, layout, in_shape, rfs):
    """Flatten counted the remaining height only for rank-4 inputs: Conv1D(3), Conv1D(3), Flatten, Dense on
    (1, 20, 1) reported 5 and Conv3D(3), Flatten, Dense on (1, 10, 10, 10, 1) 3. Hand values; a GlobalAvgPool
    in Flatten's place reads the same axis (W in 1-D, H in 2-D and 3-D) and gives the same."""
    s = summary(serial(*convs(), L.Flatten(layout=layout), L.Dense(2)), in_shape)
    assert [r.rf for r in s.rows] == rfs + [rfs[-1]] and s.rf == rfs[-1]
    assert summary(serial(*convs(), GlobalAvgPool(layout=layout), L.Dense(2)), in_shape).rf == rfs[-1]
