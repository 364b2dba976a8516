"""complexity.profile: the papers' MAC accounting on keras and structured layers."""

import keras
import pytest

from keras_priors import complexity
from keras_priors.layers import LowRankConv2D, LowRankConv3D, RootConv2D


def _model(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def test_keras_applications_vgg16_and_resnet50():
    vgg = complexity.profile(keras.applications.VGG16(weights=None), verbose=False)
    assert vgg.total_params == 138_357_544
    assert abs(vgg.total_macs / 15.47e9 - 1) < 0.001
    keras.backend.clear_session()
    resnet = complexity.profile(keras.applications.ResNet50(weights=None), verbose=False)
    assert resnet.total_params == 25_636_712
    assert abs(resnet.total_macs / 3.858e9 - 1) < 0.001
    assert not resnet.unknown


@pytest.mark.parametrize(
    "layer,shape,macs",
    [
        (keras.layers.Conv2D(16, 3, padding="same"), (8, 8, 4), 8 * 8 * 9 * 4 * 16),
        (keras.layers.Conv2D(16, 3, strides=2), (9, 9, 4), 4 * 4 * 9 * 4 * 16),
        (keras.layers.Conv2D(16, 3, groups=4, padding="same"), (8, 8, 8), 8 * 8 * 9 * 2 * 16),
        (keras.layers.Conv2D(16, 3, dilation_rate=2), (9, 9, 4), 5 * 5 * 9 * 4 * 16),
        (keras.layers.Conv1D(6, 5), (20, 3), 16 * 5 * 3 * 6),
        (keras.layers.Conv3D(6, 3, padding="same", groups=2), (4, 5, 6, 4), 120 * 27 * 2 * 6),
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (8, 8, 4),
         8 * 8 * 9 * 4 * 2),
        (keras.layers.SeparableConv2D(10, 3, padding="same"), (8, 8, 4),
         8 * 8 * (9 * 4 + 4 * 10)),
        (keras.layers.Conv2DTranspose(5, 3, strides=2), (4, 4, 3), 16 * 9 * 3 * 5),
        (keras.layers.Dense(7), (5,), 35),
        (keras.layers.Dense(7), (3, 5), 3 * 35),
        (keras.layers.BatchNormalization(), (4, 4, 3), 0),
        (keras.layers.MaxPooling2D(2), (4, 4, 3), 0),
        (LowRankConv2D(8, 3, basis="lr_join", padding="same"), (6, 6, 4),
         36 * (3 * 4 * 4 * 2 + 8 * 8)),
        (RootConv2D(8, 3, groups=4, padding="same"), (6, 6, 4), 36 * 9 * 1 * 8),
        (LowRankConv3D(6, 3, basis="lr", padding="same"), (4, 4, 4, 2), 64 * 3 * 2 * 6),
        (LowRankConv2D(6, 3, basis="sf", strides=2, padding="same"), (8, 8, 2),
         8 * 4 * 3 * 2 * 6 + 4 * 4 * 3 * 6 * 6),
    ],
)
def test_layer_macs(layer, shape, macs):
    prof = complexity.profile(_model(layer, shape), verbose=False)
    assert prof.total_macs == macs
    assert prof.layers[-1].macs == macs


def test_structured_layers_get_sub_rows_and_totals_count_once():
    inputs = keras.Input((16, 16, 8))
    x = LowRankConv2D(16, 3, basis="lr_join_wfull", padding="same", name="lr")(inputs)
    x = RootConv2D(16, 3, groups=4, combine=True, padding="same", name="root")(x)
    model = keras.Model(inputs, x)
    prof = complexity.profile(model, verbose=False)
    sub = [r for r in prof.rows if r.depth == 1]
    assert [r.name for r in sub] == ["basis0_3x1", "basis1_1x3", "basis2_3x3", "combine",
                                     "root", "combine"]
    assert prof.total_params == model.count_params()
    top = {r.name: r for r in prof.layers}
    assert top["lr"].macs == sum(r.macs for r in sub[:4])
    assert top["root"].params == sum(r.params for r in sub[4:])


def test_nested_models_are_expanded():
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()],
                             name="inner")
    inputs = keras.Input((8, 8, 3))
    x = inner(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    prof = complexity.profile(model, verbose=False)
    assert prof.total_params == model.count_params()
    assert prof.total_macs == 36 * 27 * 4 + 144 * 2
    assert any(r.name == "inner" and r.depth == 0 for r in prof.rows)
    assert any(r.type == "Conv2D" and r.depth == 1 for r in prof.rows)


def test_unknown_layers_are_reported_not_guessed():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],))

        def call(self, x):
            return x * self.w

    prof = complexity.profile(_model(Scale(name="scale"), (4,)), verbose=False)
    assert prof.unknown == ["scale"]
    assert prof.layers[-1].macs is None
    assert "No MAC rule for (counted as 0): scale" in prof.table()


def test_table_prints_like_summary(capsys):
    model = _model(LowRankConv2D(8, 3, basis="lr_join", name="composite"), (8, 8, 3))
    prof = complexity.profile(model)
    out = capsys.readouterr().out
    assert "composite (LowRankConv2D)" in out and "└ combine (1x1 conv)" in out
    assert f"Total params: {model.count_params():,}" in out
    assert f"Total MACs: {prof.total_macs:,}" in out
    assert prof.to_dict()["total_macs"] == prof.total_macs


def test_subclassed_model_is_refused_clearly():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="profile needs a built Functional or Sequential model"):
        complexity.profile(Net(), verbose=False)


def test_format_count():
    assert complexity.format_count(3_858_000_000) == "3.86 G"
    assert complexity.format_count(15_310_000) == "15.31 M"
