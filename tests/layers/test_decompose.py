"""`decompose()`: every structured layer rebuilt from its steps with plain Keras convs
(and numpy padding / cropping / channel slicing) equals the layer, 2D and 3D, every preset,
strides and dilation; random inputs and weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_priors.layers import PRESETS, LowRankConv2D, LowRankConv3D, RootConv2D, RootConv3D

from .harness import set_random_weights

CONV = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}
GEOMETRY = [  # (strides, padding, dilation_rate)
    (1, "same", 1), (2, "same", 1), (2, "valid", 1), (1, "same", 2), (1, "valid", 2),
]


def _plain(step, x):
    """One ConvStep with a plain keras ConvND on a numpy channels-last batch."""
    rank = x.ndim - 2
    if step.input_channels is not None:
        x = x[..., slice(*step.input_channels)]
    padding = step.padding
    if not isinstance(padding, str):
        x = np.pad(x, [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in padding] + [(0, 0)])
        x = x[(slice(None),) + tuple(slice(max(-lo, 0), hi if hi < 0 else None)
                                     for lo, hi in padding)]
        padding = "valid"
    kernel = keras.ops.convert_to_numpy(step.kernel)
    conv = CONV[rank](kernel.shape[-1], kernel.shape[:rank], strides=step.strides,
                      padding=padding, dilation_rate=step.dilation_rate, groups=step.groups,
                      use_bias=step.bias is not None)
    conv.build(x.shape)
    conv.set_weights([kernel] + ([] if step.bias is None else
                                 [keras.ops.convert_to_numpy(step.bias)]))
    return keras.ops.convert_to_numpy(conv(x))


def _rebuild(layer, x, split_groups=False):
    d = layer.decompose(x.shape, split_groups=split_groups)
    assert d.data_format == "channels_last"
    if d.sequential:
        y = x
        for step in d.steps:
            y = _plain(step, y)
    else:
        y = np.concatenate([_plain(step, x) for step in d.steps], axis=-1)
    if d.combine is not None:
        y = _plain(d.combine, y)
    return keras.ops.convert_to_numpy(d.activation(y))


def _check(layer, shape, split_groups=False):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    set_random_weights(layer, shape)
    want = keras.ops.convert_to_numpy(layer(x))
    got = _rebuild(layer, x, split_groups)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return layer.decompose(x.shape, split_groups=split_groups)


@pytest.mark.parametrize("strides,padding,dilation", GEOMETRY)
@pytest.mark.parametrize("basis", sorted(PRESETS[2]))
def test_lowrank_2d_equals_its_plain_convs(basis, strides, padding, dilation):
    layer = LowRankConv2D(8, 3, basis=basis, strides=strides, padding=padding,
                          dilation_rate=dilation, activation="relu")
    d = _check(layer, (2, 9, 8, 3))
    assert len(d.steps) == len(layer.members)
    assert d.sequential == (basis == "sf")
    assert (d.combine is not None) == layer.combine


@pytest.mark.parametrize("strides,padding,dilation", GEOMETRY)
@pytest.mark.parametrize("basis", sorted(PRESETS[3]))
def test_lowrank_3d_equals_its_plain_convs(basis, strides, padding, dilation):
    layer = LowRankConv3D(6, 3, basis=basis, strides=strides, padding=padding,
                          dilation_rate=dilation)
    _check(layer, (1, 7, 6, 8, 2))


def test_explicit_basis_with_uneven_members():
    layer = LowRankConv2D(12, basis=[("5x1", 4), ("1x3", 4), ("3x3", 4)], strides=2,
                          padding="same")
    d = _check(layer, (1, 11, 10, 3))
    # TF's SAME pads W=10 of the 5x3 bounding kernel by (0, 1) at stride 2; the centred
    # 5x1 member sits one column in, so it crops that column instead of padding
    assert [s.padding for s in d.steps] == [[(2, 2), (-1, 0)], "same", "same"]


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("strides,padding,dilation", GEOMETRY)
@pytest.mark.parametrize("cls,shape", [(RootConv2D, (2, 9, 8, 8)), (RootConv3D, (1, 7, 6, 5, 4))])
def test_root_equals_its_plain_convs(cls, shape, strides, padding, dilation, split):
    layer = cls(8, 3, groups=4, strides=strides, padding=padding, dilation_rate=dilation,
                combine=True, spatial_filters=12, activation="relu")
    d = _check(layer, shape, split_groups=split)
    if split:
        cin = shape[-1] // 4
        assert [s.input_channels for s in d.steps] == [(g * cin, (g + 1) * cin) for g in range(4)]
        assert {s.groups for s in d.steps} == {1}
    else:
        assert [(s.groups, s.input_channels) for s in d.steps] == [(4, None)]


def test_steps_hold_the_layers_own_weights():
    layer = RootConv2D(8, 3, groups=2)
    layer.build((1, 5, 5, 4))
    (step,) = layer.decompose().steps
    assert step.kernel is layer.kernel and step.bias is layer.bias


def test_unbuilt_layer_and_missing_static_shape_are_named():
    layer = LowRankConv2D(8, 3, basis="lr", strides=2, padding="same", name="lowrank")
    with pytest.raises(ValueError, match="LowRankConv2D 'lowrank' must be built"):
        layer.decompose((1, 8, 8, 3))
    layer.build((None, None, None, 3))
    with pytest.raises(ValueError, match="needs static spatial dimensions"):
        layer.decompose((1, None, None, 3))
