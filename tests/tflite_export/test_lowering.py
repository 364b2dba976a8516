"""Lowering passes: every lowered model equals its source on random inputs and weights."""

import keras
import numpy as np
import pytest

from keras_priors import zoo
from keras_priors.layers import LowRankConv2D, LowRankConv3D, RootConv2D, RootConv3D
from keras_priors.tflite_export.lowering import Lowered, lower, non_unit_violations

L = keras.layers


def _randomize(model, rng):
    """Non-trivial weights everywhere; scales and variances stay positive."""
    for v in model.weights:
        shape = tuple(v.shape)
        if any(k in v.path for k in ("gamma", "variance")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        v.assign(value.astype("float32"))
    return model


def _model(layers, input_shape, rng, batch_size=None):
    x = keras.Input(input_shape, batch_size=batch_size, name="volume")
    y = x
    for layer in layers:
        y = layer(y)
    return _randomize(keras.Model(x, y), rng)


def _check(model, target, rng, batch=1):
    low = lower(model, target)
    assert isinstance(low, Lowered)
    x = rng.normal(size=(batch, *model.input_shape[1:])).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x))
    got = low.from_lowered_output(keras.ops.convert_to_numpy(low.model(low.to_lowered_input(x))))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    return low


def _classes(model):
    return {type(layer).__name__ for layer in model.layers}


def _grouped(model):
    return [layer.name for layer in model.layers if getattr(layer, "groups", 1) > 1
            and isinstance(layer, (L.Conv2D, L.Conv3D))]


def _max_rank(model):
    return max(len(layer.output.shape) for layer in model.layers)


# ------------------------------------------------------------------------- API
def test_unknown_target_names_the_choices():
    model = _model([L.ReLU()], (4, 4, 2), np.random.default_rng(0))
    with pytest.raises(ValueError) as err:
        lower(model, "gpu")
    assert str(err.value) == "Unknown target='gpu'; choose one of cpu, edgetpu"


def test_source_model_is_untouched(rng):
    model = _model([LowRankConv3D(6, 3, basis="lr_join", padding="same", name="lr"),
                    RootConv3D(8, 3, groups=2, combine=True, padding="same", name="root")],
                   (4, 6, 4, 4), rng)
    names = [layer.name for layer in model.layers]
    weights = [w.copy() for w in model.get_weights()]
    for target in ("cpu", "edgetpu"):
        low = lower(model, target)
        assert low.model is not model
    assert [layer.name for layer in model.layers] == names
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert not {id(v) for v in model.weights} & {id(v) for v in low.model.weights}


# --------------------------------------------------------------- 2D, native layout
@pytest.mark.parametrize("target", ["cpu", "edgetpu"])
@pytest.mark.parametrize("layer", [
    lambda: LowRankConv2D(6, 3, basis="lr", padding="same", activation="relu"),
    lambda: LowRankConv2D(6, 3, basis="lr_join", padding="same", strides=2),
    lambda: LowRankConv2D(6, 3, basis="sf", padding="valid"),
    lambda: LowRankConv2D(6, basis=[("5x1", 2), ("1x3", 2), ("3x3", 2)], padding="valid"),
], ids=["lr", "lr_join_s2", "sf", "explicit_valid"])
def test_lowrank2d(layer, target, rng):
    low = _check(_model([layer()], (9, 8, 4), rng), target, rng, batch=2)
    assert _classes(low.model) <= {"InputLayer", "Conv2D", "Concatenate", "ZeroPadding2D",
                                   "Cropping2D", "Activation"}
    assert [a["pass"] for a in low.applied] == ["builtin_structured"]
    assert low.input_layout == "native" and low.unsupported == []


@pytest.mark.parametrize("combine", [False, True])
def test_root2d_grouped_on_cpu_split_on_edgetpu(combine, rng):
    model = _model([RootConv2D(8, 3, groups=4, combine=combine, padding="same",
                               activation="relu", name="root")], (6, 5, 8), rng)
    cpu = _check(model, "cpu", rng, batch=2)
    assert _grouped(cpu.model) == ["root_conv"]
    tpu = _check(model, "edgetpu", rng, batch=2)
    assert _grouped(tpu.model) == [] and tpu.applied[0]["pass"] == "split_groups"
    assert tpu.unsupported == []


def test_grouped_plain_conv2d_split_for_edgetpu_only(rng):
    model = _model([L.Conv2D(6, 3, groups=3, activation="relu", name="g")], (6, 6, 6), rng)
    assert _grouped(_check(model, "cpu", rng).model) == ["g"]
    assert _grouped(_check(model, "edgetpu", rng).model) == []


# --------------------------------------------------------------- 3D, native layout
@pytest.mark.parametrize("layer", [
    lambda: LowRankConv3D(6, 3, basis="lr", padding="same"),
    lambda: LowRankConv3D(6, 3, basis="lr_join", padding="valid", activation="relu"),
    lambda: RootConv3D(8, 3, groups=4, padding="same"),
    lambda: RootConv3D(8, 3, groups=2, combine=True, spatial_filters=4, strides=2),
    lambda: L.Conv3D(6, 3, groups=2, padding="same", activation="relu"),
], ids=["lr", "lr_join", "root", "root_combine", "conv3d_groups"])
def test_3d_for_cpu_has_no_grouped_conv3d(layer, rng):
    low = _check(_model([layer()], (5, 6, 4, 4), rng), "cpu", rng, batch=2)
    assert _grouped(low.model) == [] and low.unsupported == []
    assert low.input_layout == "native"


# ------------------------------------------------------- 3D as rows, for the Edge TPU
ROWS_OK = {"InputLayer", "Conv2D", "Concatenate", "ZeroPadding2D", "Cropping2D", "Reshape",
           "Activation", "MaxPooling2D", "AveragePooling2D", "ReLU",
           "GroupNorm", "BatchNormalization"}


def _check_rows(model, rng):
    low = _check(model, "edgetpu", rng)
    assert low.input_layout == "volume_as_rows"
    assert low.unsupported == [], low.unsupported
    assert _classes(low.model) <= ROWS_OK
    assert _max_rank(low.model) == 4 and non_unit_violations(low.model) == []
    return low


@pytest.mark.parametrize("layer", [
    lambda: LowRankConv3D(6, 3, basis="lr", padding="same"),
    lambda: LowRankConv3D(6, 3, basis="lr_join", padding="same", activation="relu"),
    lambda: LowRankConv3D(6, 3, basis="lr_join", padding="valid"),
    lambda: LowRankConv3D(8, 3, basis="lr_join_wfull", padding="same"),
    lambda: LowRankConv3D(6, 3, basis="sf", padding="same"),
    lambda: RootConv3D(8, 3, groups=4, padding="same", activation="relu"),
    lambda: RootConv3D(8, 3, groups=2, combine=True, padding="same"),
    lambda: L.Conv3D(6, 3, groups=2, padding="same"),
    lambda: L.Conv3D(5, 3, padding="same", activation="sigmoid"),
    lambda: L.Conv3D(5, (2, 3, 1), padding="same"),
    lambda: L.Conv3D(5, (3, 2, 4), padding="valid", use_bias=False),
    lambda: L.Conv3D(3, 1, activation="softmax"),
], ids=["lr", "lr_join", "lr_join_valid", "lr_join_wfull", "sf", "root", "root_combine",
        "conv3d_groups", "conv3d_full", "conv3d_even", "conv3d_valid", "conv3d_1x1x1"])
def test_3d_conv_as_rows(layer, rng):
    low = _check_rows(_model([layer()], (4, 6, 5, 4), rng, batch_size=1), rng)
    assert low.model.input_shape == (1, 24, 5, 4)
    assert {a["pass"] for a in low.applied} == {"volume_as_rows"}


def test_3d_pooling_upsampling_padding_norms_as_rows(rng):
    layers = [L.MaxPooling3D(2), L.GroupNormalization(groups=-1), L.ReLU(),
              L.UpSampling3D((2, 2, 1)), L.BatchNormalization(), L.AveragePooling3D((1, 2, 2)),
              L.ZeroPadding3D(((1, 0), (0, 2), (1, 1))), L.Cropping3D(((0, 1), (1, 1), (0, 2)))]
    _check_rows(_model(layers, (4, 6, 8, 3), rng, batch_size=1), rng)


def test_skip_concatenation_as_rows(rng):
    x = keras.Input((4, 4, 6, 2), batch_size=1)
    a = L.Conv3D(3, 3, padding="same")(x)
    b = L.UpSampling3D(2)(L.MaxPooling3D(2)(a))
    y = L.Concatenate()([b, a])
    _check_rows(_randomize(keras.Model(x, y), rng), rng)


@pytest.mark.parametrize("name,norm", [("unet3d_lowrank", "instance"), ("unet3d", "instance"),
                                       ("unet3d_root", "batch")])
def test_unet3d_lowers_for_edgetpu(name, norm, rng):
    # Batch norm keeps large activations: compare linear logits, tolerance scaled by them.
    head = "linear" if norm == "batch" else None
    model = _randomize(zoo.load(name, input_shape=(8, 8, 8, 2), classes=3, widths=(4, 8),
                                norm=norm, classifier_activation=head), rng)
    low = _check_rows(model, rng)
    assert "Conv3D" not in _classes(low.model)
    lowered = {a["layer"] for a in low.applied}
    assert {"enc1_conv2", "down1", "up0", "predictions"} <= lowered


# ----------------------------------------------------------------- what is reported
def test_strided_conv3d_is_reported_and_still_exact(rng):
    model = _model([L.Conv3D(4, 3, padding="same", name="c1"),
                    L.Conv3D(4, 3, strides=2, padding="same", name="strided"),
                    L.ReLU(name="relu")], (4, 4, 4, 2), rng, batch_size=1)
    low = _check(model, "edgetpu", rng)
    reported = {u["layer"]: u["reason"] for u in low.unsupported}
    assert "strides=(2, 2, 2)" in reported["strided"]
    assert "c1" not in reported
    assert any("dimensions larger than 1" in r for r in reported.values())


@keras.saving.register_keras_serializable(package="test_lowering")
class Twice(keras.layers.Layer):
    def call(self, x):
        return x * 2.0


def test_custom_layer_is_reported_by_name(rng):
    model = _model([L.Conv2D(4, 3, name="c"), Twice(name="twice")], (6, 6, 2), rng)
    for target in ("cpu", "edgetpu"):
        low = _check(model, target, rng)
        assert [(u["layer"], u["class"]) for u in low.unsupported] == [("twice", "Twice")]


def test_sequential_model(rng):
    model = keras.Sequential([keras.Input((4, 6, 4, 2), batch_size=1),
                              LowRankConv3D(3, 3, basis="lr", padding="same")])
    _check_rows(_randomize(model, rng), rng)


def test_lowered_model_round_trips_as_keras_file(rng, tmp_path):
    model = _model([RootConv3D(4, 3, groups=2, combine=True, padding="same"),
                    L.GroupNormalization(groups=-1), L.UpSampling3D(2)], (2, 4, 2, 2), rng,
                   batch_size=1)
    low = lower(model, "edgetpu")
    path = tmp_path / "lowered.keras"
    low.model.save(path)
    again = keras.saving.load_model(path)  # built-in layers only: safe mode loads it
    x = low.to_lowered_input(rng.normal(size=(1, 2, 4, 2, 2)).astype("float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)),
                                  keras.ops.convert_to_numpy(low.model(x)))


def test_layers_inside_a_nested_model_are_reported(rng):
    inner = keras.Sequential([keras.Input((4, 4, 4, 2)), L.Conv3D(2, 1, name="c3")],
                             name="inner")
    model = _model([inner], (4, 4, 4, 2), rng, batch_size=1)
    low = _check(model, "edgetpu", rng)
    assert ("inner/c3", "Conv3D") in [(u["layer"], u["class"]) for u in low.unsupported]


def test_non_unit_checker():
    x = keras.Input((4, 3, 2), batch_size=1)
    y = L.Reshape((4, 3, 2, 1))(x)
    z = L.Reshape((2, 2, 3, 2), name="four")(y)
    found = non_unit_violations(keras.Model(x, [y, z]))
    assert [(v["layer"], v["class"]) for v in found] == [("four", "Reshape")]
    assert "has 4 dimensions larger than 1 (limit 3)" in found[0]["reason"]
    assert non_unit_violations(keras.Model(x, z), limit=4) == []
    free = keras.Input((4, 3, 2))  # an unknown batch converts as 1
    assert non_unit_violations(keras.Model(free, L.ReLU()(free))) == []


# ------------------------------------------------------------------- TFLite check
def test_edgetpu_lowered_unet_converts_without_conv3d(rng):
    pytest.importorskip("ai_edge_litert.interpreter")
    from keras_priors.tflite_export import convert, edgetpu, verify

    model = _randomize(zoo.load("unet3d_lowrank", input_shape=(8, 8, 8, 2), classes=3,
                                widths=(4, 8)), rng)
    low = lower(model, "edgetpu")
    flatbuffer = convert.convert_model(low.model)
    interpreter = verify.interpreter(flatbuffer, delegates=False)
    listing = edgetpu.read_model(model_content=flatbuffer)
    ops = {op["op"] for op in listing["ops"]}
    assert "CONV_3D" not in ops and "CONV_2D" in ops
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    produced = [shapes[i] for op in listing["ops"] for i in op["outputs"]]
    assert max(sum(1 for d in shape if d > 1) for shape in produced) <= 3
    assert max(len(shape) for shape in produced) <= 4
    x = rng.normal(size=(1, 8, 8, 8, 2)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], low.to_lowered_input(x))
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    want = keras.ops.convert_to_numpy(low.model(low.to_lowered_input(x)))
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(low.from_lowered_output(got),
                               keras.ops.convert_to_numpy(model(x)), atol=1e-4)


# ------------------------------------------------------ GroupNormalization -> GroupNorm
@pytest.mark.parametrize("groups,center,scale", [(-1, True, True), (2, True, True),
                                                 (1, False, True), (-1, True, False)],
                         ids=["instance", "groups2", "layer_like_no_beta", "no_gamma"])
@pytest.mark.parametrize("shape,target", [((5, 6, 4), "cpu"), ((3, 4, 5, 4), "cpu"),
                                          ((3, 4, 5, 4), "edgetpu")],
                         ids=["2d", "3d_native", "3d_rows"])
def test_group_norm_becomes_builtin_ops_exactly(groups, center, scale, shape, target, rng):
    """Within 1e-5 of keras' GroupNormalization in float32, on an input far from zero mean
    and unit variance (the rewrite computes mean, d = x - mean, MEAN(d * d), RSQRT)."""
    norm = L.GroupNormalization(groups=groups, center=center, scale=scale, epsilon=1e-3,
                                name="norm")
    model = _model([L.Conv2D(4, 1) if len(shape) == 3 else L.Conv3D(4, 1), norm], shape, rng,
                   batch_size=1 if target == "edgetpu" else None)
    model.layers[1].bias.assign(np.array([3.0, -5.0, 0.5, 10.0], "float32"))
    low = _check(model, target, rng)
    assert "GroupNormalization" not in _classes(low.model) and "GroupNorm" in _classes(low.model)
    assert [a["detail"] for a in low.applied if a["layer"] == "norm"][0].startswith(
        "instance norm" if groups == -1 else f"{groups if groups > 0 else 4} groups")
    assert low.unsupported == []


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
def test_group_norm_converts_to_int8_edgetpu_builtins(rng):
    tf = pytest.importorskip("tensorflow")
    from keras_priors.tflite_export import edgetpu

    model = _model([L.Conv3D(8, 3, padding="same"), L.GroupNormalization(groups=-1), L.ReLU(),
                    L.Conv3D(8, 1), L.GroupNormalization(groups=2)], (4, 4, 4, 2), rng,
                   batch_size=1)
    low = lower(model, "edgetpu")
    x = rng.normal(size=(8, 1, 4, 4, 4, 2)).astype("float32")
    converter = tf.lite.TFLiteConverter.from_keras_model(low.model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([low.to_lowered_input(e)] for e in x)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    m = edgetpu.read_model(model_content=converter.convert())
    ops = {op["op"] for op in m["ops"]}
    assert {"MEAN", "SUB", "MUL", "RSQRT", "ADD"} <= ops <= set(edgetpu.SUPPORTED_OPS)
    assert edgetpu.float_offenders(m) == []


def test_gn_layer_round_trips_and_needs_divisible_channels(tmp_path):
    from keras_priors.tflite_export.lowering import GroupNorm

    x = keras.Input((6, 4), batch_size=1)
    model = keras.Model(x, GroupNorm(2, epsilon=1e-4, center=False, name="gn")(x))
    model.save(tmp_path / "gn.keras")
    again = keras.saving.load_model(tmp_path / "gn.keras")
    assert again.get_layer("gn").get_config() == model.get_layer("gn").get_config()
    with pytest.raises(ValueError, match="5 channels are not divisible into 2 groups"):
        GroupNorm(2)(keras.Input((3, 5)))


# -------------------------------------------------------------------- 3D for the CPU
def test_3d_unet_for_cpu_native_pooling_any_batch_rows_at_batch1(rng):
    model = _randomize(zoo.load("unet3d_lowrank", input_shape=(8, 8, 8, 2), classes=3,
                                widths=(4, 8), norm="batch", classifier_activation="linear"),
                       rng)
    native = _check(model, "cpu", rng, batch=2)  # any batch: native layout, 2D pooling
    assert native.input_layout == "native" and native.unsupported == []
    assert "MaxPooling3D" not in _classes(native.model)
    assert "builtin_pool" in {a["pass"] for a in native.applied}
    rows = lower(model, "cpu", batch_size=1)
    assert rows.input_layout == "volume_as_rows" and rows.model.input_shape == (1, 64, 8, 2)
    assert _classes(rows.model) <= ROWS_OK and rows.unsupported == []
    x = rng.normal(size=(1, 8, 8, 8, 2)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x))
    got = rows.from_lowered_output(keras.ops.convert_to_numpy(rows.model(rows.to_lowered_input(x))))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    with pytest.raises(ValueError, match="batch_size must be None or 1"):
        lower(model, "cpu", batch_size=2)


@pytest.mark.parametrize("pool", [
    lambda: L.MaxPooling3D((2, 1, 2)), lambda: L.AveragePooling3D(2, padding="same"),
    lambda: L.MaxPooling3D((1, 1, 3))], ids=["max_2x1x2", "avg_same_odd", "max_w_floor"])
def test_native_3d_pooling_is_exact(pool, rng):
    low = _check(_model([pool()], (5, 4, 7, 3), rng), "cpu", rng, batch=2)
    assert _classes(low.model) <= {"InputLayer", "Reshape", "MaxPooling2D", "AveragePooling2D"}


def test_overlapping_3d_pooling_is_reported_on_cpu(rng):
    model = _model([L.MaxPooling3D(3, strides=2, name="overlap")], (6, 6, 6, 2), rng)
    low = _check(model, "cpu", rng)
    assert [u["layer"] for u in low.unsupported] == ["overlap"]
    assert "strides = pool_size" in low.unsupported[0]["reason"]
