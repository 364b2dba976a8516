"""The tfmot bridge: tf_keras twins equal their Keras 3 models, QAT and pruning run, and the
int8 TFLite is integer end to end. Random inputs and synthetic labels (shapes only)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_priors import zoo
from keras_priors.layers import LowRankConv2D, RootConv2D
from keras_priors.tflite_export import tfmot_bridge as tb

pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")


def _randomise(model, seed=0):
    """Non-trivial weights everywhere, BN statistics included (variances positive)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        v = rng.standard_normal(w.shape).astype("float32") * 0.5
        w.assign(np.abs(v) + 0.5 if "variance" in w.path else v)
    return model


def _model(layer, shape=(9, 10, 4), bn=True):
    inp = keras.Input(shape, name="image")
    x = layer(inp)
    if bn:
        x = keras.layers.BatchNormalization(name="bn")(x)
    return _randomise(keras.Model(inp, x))


def _assert_equal(model, **kwargs):
    twin = tb.to_tf_keras(model, check=False, **kwargs)
    diff, magnitude = tb.max_difference(model, twin)
    assert diff <= 1e-5 * max(1.0, magnitude), (diff, magnitude)
    return twin


@pytest.mark.parametrize("basis", ["lr", "lr_join"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_lowrank_equals_keras3(basis, strides, padding):
    _assert_equal(_model(LowRankConv2D(8, 3, basis=basis, strides=strides, padding=padding,
                                       name="lowrank")))


def test_lowrank_branches_carry_the_following_batch_norm():
    twin = _assert_equal(_model(LowRankConv2D(8, 3, basis="lr", padding="same", name="lowrank")))
    names = [layer.name for layer in twin.layers]
    assert "bn_0" in names and "bn_1" in names  # one BN slice per member, then the concat


@pytest.mark.parametrize("combine", [False, True])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("root", ["split", "grouped"])
def test_root_equals_keras3(combine, strides, root):
    layer = RootConv2D(8, 3, groups=4, combine=combine, strides=strides, padding="same",
                       activation="relu", name="root")
    _assert_equal(_model(layer, bn=False), root=root)


@pytest.mark.parametrize("name", ["nin_c3_lr", "resnet20_root4"])
def test_zoo_model_equals_keras3(name):
    model = _randomise(zoo.load(name, input_shape=(12, 12, 1), width=0.25))
    twin = tb.to_tf_keras(model)  # check=True asserts equality within 1e-5 itself
    _assert_equal(model)
    assert twin.count_params() == model.count_params()


def test_unsupported_layer_is_named():
    inp = keras.Input((8, 4))
    out = keras.layers.LayerNormalization(name="odd_norm")(inp)
    with pytest.raises(ValueError, match="layer 'odd_norm' of class LayerNormalization"):
        tb.to_tf_keras(keras.Model(inp, out))


def _small_classifier():
    inp = keras.Input((12, 12, 4), name="image")
    x = LowRankConv2D(8, 3, basis="lr", padding="same", name="lowrank")(inp)
    x = keras.layers.BatchNormalization(name="lowrank_bn")(x)
    x = keras.layers.ReLU(name="lowrank_relu")(x)
    x = RootConv2D(8, 3, groups=2, strides=2, padding="same", use_bias=False, name="root")(x)
    x = keras.layers.BatchNormalization(name="root_bn")(x)
    x = keras.layers.ReLU(name="root_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inp, out)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 12, 12, 4)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("root", ["split", "grouped"])
def test_qat_trains_and_converts_to_integer_tflite(root):
    from keras_priors.tflite_export import edgetpu, verify

    model = _small_classifier()
    before = [np.array(w) for w in model.get_weights()]
    qat = tb.quantize_aware(model, root=root)
    assert any(type(layer).__name__ == "QuantizeWrapperV2" for layer in qat.layers)
    x, y = _data()
    history = tb.fine_tune(qat, (x, y), epochs=1, lr=1e-3, batch_size=16)
    assert np.isfinite(history["loss"][0])
    blob = tb.to_tflite_int8(qat, x)
    interp = verify.interpreter(blob, delegates=False)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    dtypes = {d["index"]: np.dtype(d["dtype"]) for d in interp.get_tensor_details()}
    assert np.dtype("float32") not in set(dtypes.values())
    ops = edgetpu.read_model(model_content=blob)["ops"]
    names = {op["op"] for op in ops}
    assert ("STRIDED_SLICE" in names) == (root == "split")
    weighted = [op for op in ops if op["op"] in ("CONV_2D", "FULLY_CONNECTED")]
    # 2 low-rank members, the root layer (2 group convs or 1 grouped conv), the head
    assert len(weighted) == (5 if root == "split" else 4)
    for op in weighted:
        data, kernel, *bias = op["inputs"]
        assert dtypes[data] == dtypes[kernel] == dtypes[op["outputs"][0]] == np.int8
        assert [dtypes[b] for b in bias] == [np.dtype("int32")]
    accuracy = tb.evaluate_tflite(blob, x, y)
    assert 0.0 <= accuracy <= 1.0
    for a, b in zip(before, model.get_weights()):  # the Keras 3 source is untouched
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("schedule", ["constant", "polynomial"])
def test_pruning_reaches_sparsity_after_strip(schedule):
    model = _small_classifier()
    before = [np.array(w) for w in model.get_weights()]
    pruned = tb.prune(model, 0.6, begin_step=0, end_step=3, schedule=schedule, frequency=1)
    x, y = _data(32)
    tb.fine_tune(pruned, (x, y), epochs=1, lr=1e-3, batch_size=8)  # steps 0..3
    stripped = tb.strip(pruned)
    assert not any("prune" in type(layer).__name__.lower() for layer in stripped.layers)
    kernels = [layer.kernel.numpy() for layer in stripped.layers if hasattr(layer, "kernel")]
    assert len(kernels) == 5
    for k in kernels:  # every Conv2D / Dense kernel, to within one weight
        assert abs(np.mean(k == 0) - 0.6) <= 1.0 / k.size + 1e-9
    assert tb.sparsity(stripped) == pytest.approx(0.6, abs=0.02)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_calibrated_qat_starts_close_to_the_float_model():
    model = _randomise(_small_classifier())
    x, _ = _data(32)
    qat = tb.quantize_aware(model, calibration_data=x)
    # tfmot starts every range at [-6, 6]; calibrated, the fake-quant graph tracks the float
    np.testing.assert_allclose(qat(x, training=False), model(x, training=False), atol=0.05)


def test_recalibrate_batch_norm_averages_batch_statistics():
    twin = tb.to_tf_keras(_model(LowRankConv2D(8, 3, basis="lr_join", padding="same",
                                               name="lowrank")), check=False)
    x = np.random.default_rng(1).standard_normal((64, 9, 10, 4)).astype("float32")
    tb.recalibrate_batch_norm(twin, x, batch_size=32)
    import tf_keras

    probe = tf_keras.Model(twin.inputs, twin.get_layer("lowrank_combine").output)
    y = np.asarray(probe(x)).reshape(-1, 8)
    bn = twin.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), y.mean(0), rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_missing_tflite_file_is_named(tmp_path):
    missing = tmp_path / "none.tflite"
    with pytest.raises(ValueError, match=f"TFLite file '{missing}' does not exist"):
        tb.evaluate_tflite(missing, np.zeros((1, 12, 12, 4), "float32"), [0])


def test_split_root_channel_slices_pass_through_qat_unquantized():
    qat = tb.quantize_aware(_small_classifier(), root="split")
    slices = [layer for layer in qat.layers if layer.name.startswith("quant_root_group")
              and layer.name.endswith("_input")]
    assert len(slices) == 2
    for layer in slices:  # a QuantizeWrapper holding no quantizer variables
        assert type(layer.quantize_config).__name__ == "PassThrough"
        assert not [v for v in layer.non_trainable_weights if v.name.endswith(("min:0", "max:0"))]
